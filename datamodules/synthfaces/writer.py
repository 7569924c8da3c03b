"""SynthFaces dataset writer: FOMM-layout H.264 clips, per-clip ground truth, cross-identity targets.

Layout under ``root`` (VoxCeleb-FOMM clip naming ``identity#video#start#end.mp4``)::

    train/id0000#synth00#0#24.mp4 …   test/id0013#synth01#0#24.mp4 …     (identity-disjoint, ~80/20)
    meta/<clip stem>.npz              keypoints T×K×2, masks_hand / masks_face T×H×W bool, keypoints_visible,
                                      identity, identity_params, motion (JSON), has_hand, split, fps, resolution
    meta/keypoint_names.json
    cross/<A>__<clip B stem>.mp4/.npz identity A performing clip B's motion (the ground truth of A driven by B)
    cross/pairs.csv                   source,driving,target (paths relative to root)
    synthfaces.json                   manifest: config, version, counts, splits

Identity ``i`` is drawn from ``default_rng([seed, 0, i])`` and clip ``(i, c)``'s motion from
``default_rng([seed, 1, i, c])``, so a dataset with more identities extends a smaller one with the same seed.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..prepare.encode import X264_REPRODUCIBLE
from .renderer import KEYPOINT_NAMES, render_clip, sample_identity, sample_motion

VERSION = "1.1"   # 1.1: x264 mbtree=0 (byte-reproducible encodes)
MANIFEST = "synthfaces.json"
CRF = 16


def _config_dict(cfg: Any) -> dict[str, Any]:
    """SynthConfig, a Hydra DictConfig node or a plain mapping → validated plain dict of SynthConfig fields."""
    from datamodules.config import SynthConfig

    if dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    elif isinstance(cfg, Mapping):
        d = dict(cfg)
    else:
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True)
    return dataclasses.asdict(SynthConfig(**d))   # unknown keys raise TypeError naming the key


def synth_key(cfg: Any) -> str:
    """Short content key of a SynthFaces config: every field (all of them change the rendered data) and the
    renderer VERSION. The default roots (``data/synthfaces-<key>/...``) are named by it, so configs that render
    different data never share — and never re-render — one folder."""
    import hashlib

    blob = json.dumps({"version": VERSION, "config": _config_dict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def identity_name(i: int) -> str:
    return f"id{i:04d}"


def clip_stem(i: int, c: int, num_frames: int) -> str:
    return f"{identity_name(i)}#synth{c:02d}#0#{num_frames}"


def split_identities(num_identities: int, seed: int, test_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """Deterministic identity split (train, test): ~80/20, at least one test identity."""
    n_test = min(num_identities, max(1, int(round(test_fraction * num_identities))))
    perm = np.random.default_rng([seed, 2]).permutation(num_identities)
    test = sorted(int(i) for i in perm[:n_test])
    train = sorted(int(i) for i in perm[n_test:])
    return train, test


def identity_params(seed: int, i: int) -> dict[str, Any]:
    return sample_identity(np.random.default_rng([seed, 0, i]))


def motion_params(seed: int, i: int, c: int, num_frames: int, hand_prob: float, fps: float,
                  motion_scale: float = 1.0) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 1, i, c])
    has_hand = bool(rng.random() < hand_prob)
    return sample_motion(rng, num_frames, hand=has_hand, fps=fps, motion_scale=motion_scale)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, crf: int = CRF) -> Path:
    """Encode T×H×W×3 uint8 RGB frames as H.264 (libx264, yuv420p) with PyAV."""
    import av

    frames = np.asarray(frames)
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {W}×{H}")
    path = Path(path)
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as out:   # byte-reproducible
        st = out.add_stream("libx264", rate=int(fps))
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.thread_count = 1                       # small frames: threads cost more than they save
        # a keyframe every 12 frames: random access (training samples) decodes ~2 frames per frame delivered
        # x264-params mbtree=0: see datamodules.prepare.encode.X264_REPRODUCIBLE (renders were not reproducible)
        st.options = {"crf": str(crf), "preset": "fast", "tune": "animation", "g": "12",
                      "x264-params": X264_REPRODUCIBLE}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a clip as T×H×W×3 uint8 RGB (PyAV)."""
    import av

    with av.open(str(path)) as inp:
        return np.stack([f.to_ndarray(format="rgb24") for f in inp.decode(video=0)])


def write_meta(path: Path, kps, masks, *, identity: str, idp, motion, split: str, fps: int, resolution: int,
               **extra) -> None:
    buf = io.BytesIO()
    np.savez_compressed(
        buf, keypoints=kps.astype(np.float32), masks_hand=masks["hand"], masks_face=masks["face"],
        keypoints_visible=masks["keypoints_visible"], identity=np.array(identity),
        identity_params=np.array(json.dumps(idp, sort_keys=True)), motion=np.array(json.dumps(motion)),
        has_hand=np.array(motion.get("hand") is not None), split=np.array(split), fps=np.array(fps),
        resolution=np.array(resolution), keypoint_names=np.array(KEYPOINT_NAMES),
        **{k: np.array(v) for k, v in extra.items()})
    path.write_bytes(buf.getvalue())


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read a clip's ``.npz`` ground truth back: arrays as arrays, JSON params as dicts, scalars as Python values."""
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, Any] = {}
        for k in z.files:
            v = z[k]
            out[k] = v.item() if v.ndim == 0 else v
    for k in ("identity_params", "motion"):
        if k in out:
            out[k] = json.loads(out[k])
    return out


def _progress(items: list, desc: str, enabled: bool) -> Iterable:
    """A bar on a terminal, periodic plain lines (done/total, rate, ETA) in a log (``toolbox.progress``)."""
    from toolbox.progress import track

    yield from track(items, total=len(items), desc=desc, unit="jobs", enabled=enabled)


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(root) / MANIFEST
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _is_current(root: Path, cfg: dict[str, Any]) -> bool:
    man = read_manifest(root)
    return man is not None and man.get("version") == VERSION and man.get("config") == cfg


def render_dataset(root: str | os.PathLike, cfg: Any, progress: bool = True, workers: int = 0,
                   replace: bool = False) -> Path:
    """Render a SynthFaces dataset into ``root`` (see the module docstring for the layout) and return ``root``.

    Idempotent: when ``root/synthfaces.json`` holds the same config and version, returns at once. Otherwise the
    dataset is rendered into a temporary sibling folder and renamed into place (no half datasets). A SynthFaces
    render of another config in ``root`` is refused unless ``replace=True`` (another job may be reading it; the
    default roots are keyed by ``synth_key``), any other non-empty folder is refused. ``workers > 1`` renders
    clips in that many processes (the output is identical: every clip is a function of its own parameters).
    """
    root = Path(root)
    c = _config_dict(cfg)
    if _is_current(root, c):
        return root
    man = read_manifest(root) if root.exists() else None
    if root.exists() and any(root.iterdir()) and man is None:
        raise FileExistsError(f"{root} exists, is not empty and holds no {MANIFEST}: refusing to render over it")
    if man is not None and not replace:
        old = man.get("config") or {}
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in c.items() if old.get(k) != v]
        if man.get("version") != VERSION:
            diff.append(f"version: {man.get('version')!r} -> {VERSION!r}")
        raise FileExistsError(f"{root} holds SynthFaces rendered with another config ({'; '.join(diff)}): not "
                              f"re-rendering it in place (another job may read it). Use another data.root — the "
                              f"default root is keyed by the config — or render with replace=True")
    if c["resolution"] % 2:
        raise ValueError(f"SynthFaces resolution must be even (H.264 yuv420p), got {c['resolution']}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _render_into(tmp, c, progress, workers)
        _move_into_place(tmp, root, c)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _move_into_place(tmp: Path, root: Path, c: dict[str, Any]) -> None:
    if root.exists() and not any(root.iterdir()):
        root.rmdir()
    if root.exists():
        if _is_current(root, c):          # another process finished the same render first
            return
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
        os.rename(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, root)
    except OSError:
        if not _is_current(root, c):
            raise


def _render_into(out: Path, c: dict[str, Any], progress: bool, workers: int = 0) -> None:
    t0 = time.time()
    N, C, T, R, fps, seed = (c["num_identities"], c["clips_per_identity"], c["num_frames"], c["resolution"],
                             c["fps"], c["seed"])
    if N < 1 or C < 1 or T < 1:
        raise ValueError(f"SynthFaces needs num_identities, clips_per_identity, num_frames >= 1: {c}")
    train, test = split_identities(N, seed)
    split_of = {i: "train" for i in train} | {i: "test" for i in test}
    for d in ("train", "test", "meta", "cross"):
        (out / d).mkdir(parents=True, exist_ok=True)
    (out / "meta" / "keypoint_names.json").write_text(json.dumps(list(KEYPOINT_NAMES), indent=1) + "\n")

    ids = {i: identity_params(seed, i) for i in range(N)}
    motions = {(i, k): motion_params(seed, i, k, T, c["hand_prob"], fps, c["motion_scale"]) for i in range(N) for k in range(C)}
    pairs = _cross_pairs(test, C, c["num_cross_pairs"], seed)
    targets = sorted({(a, b, kb) for a, _, b, kb in pairs})         # one GT render per (A, clip B)
    jobs = [dict(mp4=f"{split_of[i]}/{clip_stem(i, k, T)}.mp4", meta=f"meta/{clip_stem(i, k, T)}.npz",
                 identity=identity_name(i), idp=ids[i], motion=motions[i, k], split=split_of[i])
            for i in range(N) for k in range(C)]
    jobs += [dict(mp4=f"cross/{identity_name(a)}__{clip_stem(b, kb, T)}.mp4",
                  meta=f"cross/{identity_name(a)}__{clip_stem(b, kb, T)}.npz", identity=identity_name(a),
                  idp=ids[a], motion=motions[b, kb], split="cross", driving=f"test/{clip_stem(b, kb, T)}.mp4")
             for a, b, kb in targets]
    for j in jobs:
        j.update(out=str(out), fps=fps, resolution=R)
    desc = f"SynthFaces {N}×{C}×{T} @ {R}²"
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for fut in _progress([ex.submit(_render_job, j) for j in jobs], desc, progress):
                fut.result()
    else:
        for j in _progress(jobs, desc, progress):
            _render_job(j)
    n_hand = sum(motions[i, k]["hand"] is not None for i in range(N) for k in range(C))
    rows = [(f"{split_of[a]}/{clip_stem(a, ka, T)}.mp4", f"{split_of[b]}/{clip_stem(b, kb, T)}.mp4",
             f"cross/{identity_name(a)}__{clip_stem(b, kb, T)}.mp4") for a, ka, b, kb in pairs]
    with open(out / "cross" / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "driving", "target"])
        w.writerows(rows)
    manifest = {
        "name": "synthfaces", "version": VERSION, "config": c, "keypoint_names": list(KEYPOINT_NAMES),
        "splits": {"train": [identity_name(i) for i in train], "test": [identity_name(i) for i in test]},
        "counts": {"identities": N, "train_identities": len(train), "test_identities": len(test),
                   "clips": {"train": len(train) * C, "test": len(test) * C}, "frames_per_clip": T,
                   "hand_clips": int(n_hand), "cross_pairs": len(rows),
                   "cross_targets": len(targets)},
        "encoding": {"codec": "libx264", "pix_fmt": "yuv420p", "crf": CRF, "fps": fps},
        "render_seconds": round(time.time() - t0, 3),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _render_job(job: dict[str, Any]) -> str:
    """Render one clip (or cross-identity target) and write its mp4 + npz (top level: runs in worker processes)."""
    out, R, fps = Path(job["out"]), job["resolution"], job["fps"]
    frames, kps, masks = render_clip(job["idp"], job["motion"], R)
    write_mp4(out / job["mp4"], frames, fps)
    extra = {"driving": job["driving"]} if "driving" in job else {}
    write_meta(out / job["meta"], kps, masks, identity=job["identity"], idp=job["idp"], motion=job["motion"],
               split=job["split"], fps=fps, resolution=R, **extra)
    return job["mp4"]


def _cross_pairs(test: list[int], C: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """Deterministic cross-identity pairs among test identities: ``(A, clip of A = source, B, clip of B = driving)``.

    A ≠ B whenever there are two test identities; with a single one, a pair drives A by its own other clip.
    """
    cands = [(a, ka, b, kb) for a in test for b in test if a != b for ka in range(C) for kb in range(C)]
    if not cands:
        cands = [(a, ka, a, kb) for a in test for ka in range(C) for kb in range(C) if ka != kb or C == 1]
    order = np.random.default_rng([seed, 3]).permutation(len(cands))[: max(0, int(n))]
    return [cands[j] for j in sorted(order)]
