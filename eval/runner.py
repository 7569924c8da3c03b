"""Stream a protocol's test set through ``model.animate(source, driving)`` and score it.

``run_evaluation(model, datamodule, protocol_cfg, run_dir)`` writes into ``run_dir``:

* ``per_frame.csv`` — one row per generated frame (video, frame index, every per-frame metric);
* ``per_video.csv`` — one row per video (means over its frames, NaN-aware, plus the frame count);
* ``metrics.json`` — ``{"protocol", "protocol_hash", "metrics", "overrides", "ckpt", "model", "standin", ...}``
  written atomically; dataset metrics (FID) over all frames, per-frame metrics as the mean over all frames;
* ``eval_grid.mp4`` — source | driving | generated | target for the first ``num_grid_videos`` videos;
* ``eval/<name>/`` — the same files for each extra protocol; ``merge_extra_protocols`` adds their metrics to the
  main ``metrics.json`` as ``<name>/<metric>`` (with each protocol's hash under ``extra_protocols``), so one table
  row carries, e.g., self-reenactment and cross-identity numbers of the same checkpoint;
* ``eval_state.pt`` — the dataset-metric state + finished videos, saved after each video so an interrupted run
  resumes without recomputing finished videos (same protocol hash, model identity and data fingerprint required;
  tensors + plain types, read with ``weights_only=True``).

Model statistics: when the model has ``latent_stats() -> dict[str, float]`` (e.g. InterAnimate's mean |cos| between
learned latents), its values join ``metrics`` (so ``eval.table`` shows them as columns) and are listed under
``model_stats``. Samples' ``masks`` ({"hand", "face"}, the target's) reach the region metrics (``eval.regions``).

Frames arrive at native size (``eval_dataset(native=True)``), are cropped / resized with the protocol's ``crop`` and
``resize`` to its resolution once; the model runs at its own resolution (``animate_at_model_resolution``) and its
output is resized back; every metric then reads the same tensors (and the shared views cached on ``FrameBatch``).
The state file is keyed by protocol hash + model identity + data fingerprint (see ``ResultFiles``); non-finite
outputs, undecodable clips and upscaled clips are counted and named in ``metrics.json``; ``run_dir`` is locked
(``toolbox.locks.DirLock``) while it is written.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from eval.metrics import FrameBatch, nanmean
from eval.protocol import protocol_hash, verify_protocol
from eval.suite import Suite, build_suite

log = logging.getLogger("portraitlab.eval")

PER_FRAME, PER_VIDEO, STATE, METRICS, GRID = "per_frame.csv", "per_video.csv", "eval_state.pt", "metrics.json", "eval_grid.mp4"


# ---- data -------------------------------------------------------------------------------------------------------
def _id_from(meta: Any, index: int) -> str:
    if isinstance(meta, dict):
        if meta.get("video_id") is not None:
            return str(meta["video_id"])
        clip, src = meta.get("clip_id"), meta.get("source_clip_id")
        if clip is not None:
            return str(clip) if src in (None, "", clip) else f"{src}<-{clip}"
        for key in ("id", "video", "path"):
            if meta.get(key) is not None:
                return str(meta[key])
    return f"video{index:05d}"


def _item_ids(ds: Any) -> Optional[list[str]]:
    """Video ids known without decoding (``EvalClipDataset.items``), so finished videos are not even decoded."""
    items = getattr(ds, "items", None)
    if items is None or not hasattr(ds, "__getitem__"):
        return None
    try:
        return [_id_from({"clip_id": it.driving.clip_id, "source_clip_id": it.source.clip_id}, i)
                for i, it in enumerate(items)]
    except AttributeError:
        return None


def _dedup(ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for v in ids:
        seen[v] = seen.get(v, 0) + 1
        out.append(v if seen[v] == 1 else f"{v}#{seen[v] - 1}")
    return out


def _eval_dataset(datamodule: Any, protocol):
    """The protocol's test set: native-size frames (cropped with the protocol's ``crop``) when the datamodule can
    deliver them, so that the protocol's ``resize`` is the only resize between the file and a score."""
    if not hasattr(datamodule, "eval_dataset"):
        return datamodule
    kw = dict(split=protocol.split, mode=protocol.mode, num_frames=protocol.num_frames, stride=protocol.stride,
              max_videos=protocol.max_videos, pairs_csv=protocol.get("pairs_csv"))
    import inspect

    params = inspect.signature(datamodule.eval_dataset).parameters
    if "native" in params:
        kw["native"] = True
        if protocol.get("crop") is not None:
            kw["crop"] = str(protocol.crop)
    return datamodule.eval_dataset(**kw)


class _Guarded:
    """Wraps an indexable dataset: a sample that fails to decode becomes ``{"_error": message}`` instead of ending
    the evaluation (the runner skips it, counts it and names it in metrics.json)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return self.ds[i]
        except Exception as err:  # noqa: BLE001 - a bad clip is reported, not fatal
            return {"_error": f"{type(err).__name__}: {err}"[:500]}


def distributed() -> tuple[int, int]:
    """(rank, world size) of an initialised ``torch.distributed`` process group (DDP), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _samples_of(ds, datamodule, skip: set[str], shard: tuple[int, int] = (0, 1)
                ) -> tuple[Iterable[tuple[str, dict]], Optional[int]]:
    """(video id, sample) pairs of ``ds`` not in ``skip``, and the set's size when known. ``shard=(rank, world)``:
    only the videos ``rank, rank + world, …`` of the ones to do (DDP: each rank scores a disjoint stride, no padding,
    so every video is scored exactly once over the ranks)."""
    ids = _item_ids(ds)
    if ids is not None:
        ids = _dedup(ids)
        todo = [i for i, v in enumerate(ids) if v not in skip][shard[0]::shard[1]]
        from torch.utils.data import DataLoader, Subset

        workers = int(getattr(getattr(datamodule, "cfg", None), "num_workers", 0) or 0)
        loader = DataLoader(Subset(_Guarded(ds), todo), batch_size=None, shuffle=False,
                            num_workers=min(workers, len(todo)))
        return ((ids[i], sample) for i, sample in zip(todo, loader)), len(ids)

    def stream():
        seen: dict[str, int] = {}
        k = 0
        for i, sample in enumerate(ds):
            vid = _id_from(sample.get("meta"), i)
            seen[vid] = seen.get(vid, 0) + 1
            vid = vid if seen[vid] == 1 else f"{vid}#{seen[vid] - 1}"
            if vid not in skip:
                if k % shard[1] == shard[0]:
                    yield vid, sample
                k += 1

    try:
        total = len(ds)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return stream(), total


def eval_samples(datamodule: Any, protocol, skip: set[str], shard: tuple[int, int] = (0, 1)
                 ) -> tuple[Iterable[tuple[str, dict]], Optional[int]]:
    """(video id, sample) pairs of the protocol's test set not in ``skip``, and the set's size when known.

    ``datamodule``: a ``VideoClipDataModule`` (its ``eval_dataset`` at native size; decoded by a DataLoader with
    the data config's workers), anything else with ``eval_dataset``, or an iterable of samples. A sample that failed
    to decode is ``{"_error": message}``."""
    return _samples_of(_eval_dataset(datamodule, protocol), datamodule, skip, shard)


RESIZE_METHODS = {"bilinear_antialias": ("bilinear", True), "bilinear": ("bilinear", False),
                  "bicubic_antialias": ("bicubic", True), "bicubic": ("bicubic", False),
                  "area": ("area", False), "nearest": ("nearest", False)}


def resize_frames(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """N×3×h×w → N×3×size×size with the protocol's resize method (no-op when already that size)."""
    if x.shape[-2:] == (size, size):
        return x
    if method not in RESIZE_METHODS:
        raise ValueError(f"eval_protocol.resize={method!r} is not one of {', '.join(RESIZE_METHODS)}")
    mode, antialias = RESIZE_METHODS[method]
    kw = {"align_corners": False, "antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x.float(), size=(size, size), mode=mode, **kw).clamp(0, 1)


def _resize_video(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """…×T×3×h×w (any leading dims) → …×T×3×size×size."""
    lead = x.shape[:-3]
    return resize_frames(x.reshape(-1, *x.shape[-3:]), size, method).reshape(*lead, 3, size, size)


def model_resolution(model) -> Optional[int]:
    """The resolution the model was built / trained at (``model.cfg.resolution``), or None when it has none: a
    parameter-free model (``trainable`` False, e.g. copy-source) learned nothing at any resolution and runs at the
    protocol's."""
    if getattr(model, "trainable", True) is False:
        return None
    res = getattr(getattr(model, "cfg", None), "resolution", None)
    if res is None:
        hp = getattr(model, "hparams", None) or {}
        res = (hp.get("model") or {}).get("resolution") if isinstance(hp, dict) or hasattr(hp, "get") else None
    return None if res is None else int(res)


def animate_at_model_resolution(model, source: torch.Tensor, driving: torch.Tensor, size: int, method: str,
                                model_res: Optional[int], generator: Optional[torch.Generator] = None,
                                precision: str = "fp32", detect=None,
                                cross: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Any checkpoint under any protocol: ``source`` B×3×h×w and ``driving`` B×T×3×h×w (native size) are resized
    with the protocol's ``method`` straight to the model's resolution (never through a smaller protocol resolution)
    and animated — the whole clip in one call, every draw from ``generator``, under ``precision``'s autocast; the
    output is resized to the protocol's ``size``², where every metric is computed against the native frames resized
    to ``size``². Landmark-centred local control gets the patches ``experiments.animate`` gives it: from ``detect``
    (``preprocess=official``: FAN) or dlib's landmarks. ``cross``: a cross-identity protocol — a model's
    ``cross_identity_animate_kwargs()`` (MRFA's official relative motion) are passed too.
    Returns (source, driving, prediction) at the protocol's resolution."""
    from lit_models.base import animate_kwargs, precision_context

    src_p, drv_p = resize_frames(source, size, method), _resize_video(driving, size, method)
    r = model_res or size
    src_m, drv_m = resize_frames(source, r, method), _resize_video(driving, r, method)
    where = {"patch_centres": official_patch_centres(detect, drv_m)} if detect is not None and uses_landmarks(model) \
        else {"keypoints": local_control_landmarks(model, drv_m)}
    if cross and hasattr(model, "cross_identity_animate_kwargs"):   # e.g. MRFA's official relative motion
        where.update(model.cross_identity_animate_kwargs())
    with precision_context(precision, drv_m.device):
        pred = model.animate(src_m, drv_m, **animate_kwargs(model, generator=generator, **where))
    pred = pred.float()
    if pred.shape != drv_m.shape:
        raise RuntimeError(f"animate returned {tuple(pred.shape)} for driving {tuple(drv_m.shape)}")
    return src_p, drv_p, _resize_video(pred, size, method)


def uses_landmarks(model) -> bool:
    """A model with landmark-centred local control (X-Portrait's eye / mouth patches)."""
    import inspect

    return bool(getattr(getattr(model, "cfg", None), "use_local_control", False)) \
        and "keypoints" in inspect.signature(model.animate).parameters


def model_device(model) -> torch.device:
    """The device of the model's parameters (CPU for a parameter-free model)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def run_settings(model, device, seed: int = 0, precision: str = "auto", preprocess: str = "none") -> dict:
    """The run-time choices besides model, protocol and data that change a score, as ``metrics.json`` records them
    under ``run_settings`` (``eval.reuse`` reuses an evaluation only when they agree too): the per-clip generators'
    ``seed``, the resolved sampling ``precision``, where local-control landmarks come from (``fan`` with the
    official preprocessing, ``dlib``, or None for models without local control) and the device type."""
    from lit_models.base import resolve_precision

    device = torch.device(device) if device is not None else model_device(model)
    if preprocess not in ("auto", "official", "none"):
        raise ValueError(f"preprocess must be auto | official | none, got {preprocess!r}")
    official = getattr(model, "official_preprocess", None) is not None and preprocess in ("auto", "official")
    return {"seed": int(seed), "precision": resolve_precision(precision, device, model),
            "local_landmarks": None if not uses_landmarks(model) else ("fan" if official else "dlib"),
            "device_type": device.type}


def local_control_landmarks(model, driving: torch.Tensor) -> Optional[torch.Tensor]:
    """The landmarks ``experiments.animate`` (``preprocess=none``) gives a model with landmark-centred local
    control (``datamodules.preprocess.xportrait.dlib_landmarks`` of each driving frame), B×T×68×2 pixels of
    ``driving`` (B×T×3×H×W); None for other models or when no frame has a face."""
    if not uses_landmarks(model):
        return None
    from datamodules.preprocess.xportrait import dlib_landmarks

    out = []
    for clip in driving:
        frames = (clip.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        lm = dlib_landmarks(frames)
        if lm is None:
            return None
        out.append(torch.from_numpy(lm))
    return torch.stack(out).to(driving.device)


def official_patch_centres(detect, driving: torch.Tensor) -> torch.Tensor:
    """``preprocess=official``: X-Portrait's patch centres as ``experiments.animate`` computes them
    (``datamodules.preprocess.xportrait.patch_centres``: FAN on the frame resized to 256², official rounding and
    clipping), B×T×3×2 pixels of ``driving`` (NaN: no face, no patches)."""
    from datamodules.preprocess.xportrait import patch_centres

    out = torch.full((*driving.shape[:2], 3, 2), float("nan"))
    for b, clip in enumerate(driving):
        for t, frame in enumerate(clip.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()):
            c = patch_centres(frame, detect, target_res=frame.shape[1])
            if c is not None:
                out[b, t] = torch.from_numpy(c.astype(np.float32))
    return out.to(driving.device)


def clip_generator(seed: int, video_ids: list[str]) -> torch.Generator:
    """One generator per animated batch, seeded once from (seed, the videos' ids): the same sample whatever the
    order, sharding or resumption of the evaluation."""
    import zlib

    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32("|".join(video_ids).encode())) % 2**63)


def model_identity(model) -> str:
    """sha256 of what produces the outputs: the model class, its hyper-parameters (knobs such as ``refine_iters``
    that need no parameter) and every tensor of its state dict (names, dtypes, shapes, bytes).

    Hashing every byte costs seconds at SD scale, and a run evaluates the same weights under several protocols: the
    digest is reused while no tensor was replaced or modified in place (same storage, same autograd version)."""

    state = model.state_dict(keep_vars=True) if hasattr(model, "state_dict") else {}
    key = tuple((k, v.data_ptr(), v._version, tuple(v.shape)) for k, v in state.items() if torch.is_tensor(v))
    hp_text = str(getattr(model, "hparams", None))
    cached = getattr(model, "_identity_cache", None)     # on the object: a new model never inherits it
    if cached is not None and cached[0] == (key, hp_text):
        return cached[1]
    digest = _model_identity(model)
    try:
        object.__setattr__(model, "_identity_cache", ((key, hp_text), digest))
    except (AttributeError, TypeError):   # objects without a __dict__: no cache
        pass
    return digest


def _model_identity(model) -> str:
    import hashlib
    import json

    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    hp = getattr(model, "hparams", None)
    try:
        from omegaconf import OmegaConf

        hp = OmegaConf.to_container(OmegaConf.create(dict(hp)), resolve=True) if hp else {}
    except Exception:  # noqa: BLE001 - unusual hparams: their text still identifies them
        hp = str(hp)
    h.update(json.dumps(hp, sort_keys=True, default=str).encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for k, v in sorted(state.items()):
        if torch.is_tensor(v):
            t = v.detach().cpu().contiguous()
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(ds, dataset_key: Optional[str] = None) -> str:
    """What the evaluation set is: the dataset's own ``fingerprint()`` (clips, sizes, mtimes, frame indices, crop),
    else the caller's ``dataset_key``, else the dataset's type (an in-memory iterable)."""
    fn = getattr(ds, "fingerprint", None)
    if callable(fn):
        return str(fn())
    return str(dataset_key or type(ds).__name__)


# ---- resumable result files -------------------------------------------------------------------------------------
class ResultFiles:
    """Per-frame / per-video CSVs appended (flushed, fsynced) as videos finish; the state file marks them done.

    The state is keyed by what produced it: protocol hash, model identity (``model_identity``) and data fingerprint
    (``data_fingerprint``). Another protocol is refused (evaluate into another run_dir); another model or data set
    — a run resumed to train longer, another checkpoint evaluated into a used run_dir — discards the old rows and
    recomputes everything: finished rows are reused only for exactly the same model, protocol and data."""

    def __init__(self, run_dir: Path, phash: str, metric_names: list[str], model_id: str = "", data_id: str = ""):
        self.run_dir = run_dir
        self.phash = phash
        self.model_id, self.data_id = model_id, data_id
        self.names = metric_names
        self.frame_cols = ["video_id", "frame"] + metric_names
        self.video_cols = ["video_id", "num_frames", "nonfinite_frames"] + [n for n in metric_names]
        self.skipped: dict[str, str] = {}          # video id -> why it could not be evaluated (decode error)
        self.nonfinite: dict[str, int] = {}        # video id -> generated frames with a non-finite value
        self.upscaled: list[str] = []              # videos whose frames are smaller than the protocol's resolution

    def _read(self, name: str) -> list[dict]:
        path = self.run_dir / name
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def _load_state(self) -> Optional[dict]:
        state_path = self.run_dir / STATE
        if not state_path.is_file():
            return None
        # tensors + plain types only: loads without unpickling code (weights_only=True)
        return torch.load(state_path, map_location="cpu", weights_only=True)

    def load_done(self, dataset_state_ok=True) -> tuple[list[str], dict | None]:
        """Finished videos (in order) and the saved dataset-metric state; files rewritten to the finished set."""
        state = self._load_state()
        if state is not None and state.get("protocol_hash") != self.phash:
            raise RuntimeError(f"{self.run_dir} holds an evaluation under protocol hash {state.get('protocol_hash')}, "
                               f"not {self.phash}; evaluate into a new run_dir (results of two protocols never mix)")
        if state is not None:
            changed = [what for what, key, now in (("the model (weights or hyper-parameters)", "model_id", self.model_id),
                                                   ("the evaluation data", "data_id", self.data_id),
                                                   ("the metric list", "metrics", self.names))
                       if state.get(key) != now]
            if changed:
                log.warning("%s: the saved evaluation was made with different %s: recomputing every video",
                            self.run_dir, " and ".join(changed))
                state = None
        if state is None:   # nothing reusable: start from empty files (never relabel another model's rows)
            self._rewrite(PER_FRAME, self.frame_cols, [])
            self._rewrite(PER_VIDEO, self.video_cols, [])
            (self.run_dir / STATE).unlink(missing_ok=True)
            return [], None
        self.skipped = dict(state.get("skipped", {}))
        self.nonfinite = {k: int(v) for k, v in state.get("nonfinite", {}).items()}
        self.upscaled = list(state.get("upscaled", []))
        videos = self._read(PER_VIDEO)
        done_state = set(state["done"])
        # a video counts as done when its per-video row is written and the state saved after it
        done = [r["video_id"] for r in videos if r["video_id"] in done_state]
        keep = set(done)
        frames = [r for r in self._read(PER_FRAME) if r["video_id"] in keep]
        videos = [r for r in videos if r["video_id"] in keep]
        self._rewrite(PER_FRAME, self.frame_cols, frames)
        self._rewrite(PER_VIDEO, self.video_cols, videos)
        return done, state

    def _rewrite(self, name, cols, rows) -> None:
        from toolbox.io import atomic_write_text
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.run_dir / name, buf.getvalue())

    def append(self, video_id: str, per_frame: dict[str, np.ndarray], frame_idx: list[int],
               nonfinite_frames: int = 0) -> dict:
        row_v = {"video_id": video_id, "num_frames": len(frame_idx), "nonfinite_frames": int(nonfinite_frames)}
        row_v.update({n: nanmean(per_frame[n]) for n in per_frame})
        with open(self.run_dir / PER_FRAME, "a", newline="") as f:
            w = csv.writer(f)
            for i, t in enumerate(frame_idx):
                w.writerow([video_id, t] + [f"{float(per_frame[n][i]):.8g}" for n in self.names if n in per_frame])
            f.flush()
            os.fsync(f.fileno())
        with open(self.run_dir / PER_VIDEO, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.video_cols, extrasaction="ignore").writerow(
                {k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row_v.items()})
            f.flush()
            os.fsync(f.fileno())
        return row_v

    def save_state(self, done: list[str], suite: Suite) -> None:
        path = self.run_dir / STATE
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"protocol_hash": self.phash, "model_id": self.model_id, "data_id": self.data_id,
                    "metrics": self.names, "done": list(done), "skipped": dict(self.skipped),
                    "nonfinite": dict(self.nonfinite), "upscaled": list(self.upscaled),
                    "dataset_metrics": {m.name: m.state_dict() for m in suite.dataset_metrics}}, tmp)
        os.replace(tmp, path)


# ---- logging ----------------------------------------------------------------------------------------------------
def _log_results(loggers, protocol_name: str, metrics: dict, run_dir: Path, grid: Optional[Path], step: int = 0) -> None:
    """Mirror one protocol's results to the loggers at ``step`` (``eval.dashboard.log_eval_results``)."""
    from eval.dashboard import log_eval_results

    log_eval_results(loggers, protocol_name, metrics, run_dir / PER_VIDEO, grid, step=step)


# ---- the runner -------------------------------------------------------------------------------------------------
def _batches(samples: Iterable[tuple[str, dict]], batch_size: int):
    """Group consecutive samples of equal shapes into batches of up to ``batch_size`` videos."""
    batch: list[tuple[str, dict]] = []
    for vid, sample in samples:
        if batch and (sample["driving"].shape != batch[0][1]["driving"].shape
                      or sample["source"].shape != batch[0][1]["source"].shape):
            yield batch
            batch = []
        batch.append((vid, sample))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _frame_indices(sample: dict, T: int) -> list[int]:
    meta = sample.get("meta") or {}
    idx = meta.get("frame_indices") if isinstance(meta, dict) else None
    if idx is not None:
        idx = [int(v) for v in (idx.tolist() if hasattr(idx, "tolist") else idx)]
        if len(idx) == T:
            return idx
    return list(range(T))


def _model_name(model) -> str:
    cfg = getattr(model, "cfg", None)
    try:
        return str(cfg.name)
    except Exception:
        return type(model).__name__


def _model_stats(model) -> dict[str, float]:
    """``model.latent_stats()`` as plain floats (absent method → {}); names must not shadow a protocol metric."""
    fn = getattr(model, "latent_stats", None)
    if not callable(fn):
        return {}
    with torch.no_grad():
        stats = fn() or {}
    return {str(k): float(v.detach().cpu().item() if torch.is_tensor(v) else v) for k, v in stats.items()}


def _scale_points(kp: torch.Tensor, h: int, w: int, size: int) -> torch.Tensor:
    """Pixel (x, y) at h×w → pixels at size×size; pixel centres at integers: (x + 0.5)·s − 0.5."""
    scale = torch.tensor([size / w, size / h], dtype=torch.float32)
    return (kp.float() + 0.5) * scale - 0.5


def run_evaluation(model, datamodule, protocol_cfg, run_dir, loggers=None, ckpt: Optional[str] = None,
                   overrides: Optional[list[str]] = None, device=None, dataset_key: Optional[str] = None,
                   keypoint_locator=None, progress: bool = True, suite: Optional[Suite] = None,
                   log_step: int = 0, seed: int = 0, precision: str = "auto", preprocess: str = "none") -> dict:
    """Evaluate ``model`` under ``protocol_cfg``; returns the ``metrics.json`` content (also written to run_dir).

    Frames are read at native size, cropped and resized with the protocol's ``crop`` / ``resize`` to its
    ``resolution``; the model runs at its own resolution (``animate_at_model_resolution``) and every metric is
    computed at the protocol's. One writer: ``run_dir`` is locked (``toolbox.locks.DirLock``) while it is written.

    ``log_step``: the ``trainer/global_step`` the loggers record the results at (the checkpoint's training step).
    ``device``: where inputs go (default: the model's device; the model is not moved here). ``precision``:
    ``sampling.precision`` (auto | fp16 | bf16 | fp32); ``seed``: the per-clip generators' seed. metrics.json records
    the device, the model's dtype and the precision. ``preprocess``: official | auto (official for methods that
    define one) | none — X-Portrait's local patches from FAN landmarks as ``experiments.animate`` places them
    (its weights checked before any work), or dlib's landmarks.

    ``keypoint_locator(frames N×3×H×W) -> N×K×2`` gives the generated frames' keypoints for ``akd_gt``.
    ``dataset_key`` names the data for the FID reference-statistics cache (default: the datamodule's root).
    """
    from toolbox.locks import DirLock

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    import contextlib

    # one writer: rank 0 writes the files (under DDP the other ranks only score their shard and hand it over)
    lock = DirLock(run_dir, purpose="evaluation") if distributed()[0] == 0 else contextlib.nullcontext()
    with lock:
        return _run_evaluation(model, datamodule, protocol_cfg, run_dir, loggers, ckpt, overrides, device,
                               dataset_key, keypoint_locator, progress, suite, log_step, seed, precision, preprocess)


def _run_evaluation(model, datamodule, protocol_cfg, run_dir: Path, loggers, ckpt, overrides, device, dataset_key,
                    keypoint_locator, progress, suite, log_step: int = 0, seed: int = 0,
                    precision: str = "auto", preprocess: str = "none") -> dict:
    from toolbox.io import atomic_write_json

    from omegaconf import OmegaConf

    protocol = protocol_cfg if OmegaConf.is_config(protocol_cfg) else OmegaConf.create(protocol_cfg)
    facts = verify_protocol(protocol)
    phash = protocol_hash(protocol)
    from lit_models.base import model_dtype

    device = torch.device(device) if device is not None else model_device(model)
    settings = run_settings(model, device, seed, precision, preprocess)
    precision = settings["precision"]
    detect = None
    if settings["local_landmarks"] == "fan":       # FAN's weights: fail here, before any video
        from datamodules.preprocess.xportrait import fan_detector

        detect = fan_detector("cuda" if device.type == "cuda" else "cpu")
    suite = suite or build_suite(protocol, device=device)
    if protocol.mode == "cross":
        full_ref = [m.name for m in suite.frame_metrics if getattr(m, "needs_target", False)]
        if full_ref:
            raise ValueError(f"protocol {protocol.name}: mode=cross has no ground truth, so {full_ref} are undefined; "
                             "use no-reference metrics (fid, id, akd, mkr) or mode=synth_cross")
    names = [m.name for m in suite.frame_metrics]
    ds = _eval_dataset(datamodule, protocol)
    model_id, data_id = model_identity(model), data_fingerprint(ds, dataset_key)
    files = ResultFiles(run_dir, phash, names, model_id=model_id, data_id=data_id)
    rank, world = distributed()
    if world > 1 and any(int(getattr(m, "num_samples", 0) or 0) > 0 for m in suite.dataset_metrics):
        raise ValueError(f"protocol {protocol.name}: fid_num_samples > 0 takes the first N frames in test-set order, "
                         "which a sharded (DDP) evaluation does not have; use fid_num_samples=0 or evaluate in one process")
    done, state = files.load_done() if rank == 0 else ([], None)
    if world > 1:   # rank 0 read the finished and skipped videos (and rewrote the files); every rank skips them
        done, files.skipped = _broadcast((done, dict(files.skipped)))
    if state is not None:   # (DDP: rank 0 only — the other ranks' dataset states start empty and are summed)
        for m in suite.dataset_metrics:
            if m.name in state.get("dataset_metrics", {}):
                m.load_state_dict(state["dataset_metrics"][m.name])

    # FID reference statistics: from the cache when this dataset + protocol was evaluated before
    ref_paths = {}
    if protocol.get("use_fid_reference_cache", True) and suite.dataset_metrics:
        from eval.fid import reference_cache_path

        key = dataset_key or data_id
        for m in suite.dataset_metrics:
            if not hasattr(m, "load_reference"):
                continue
            ref_paths[m.name] = reference_cache_path(phash, key, m.name + "_" + m.backend)
            if rank == 0 and not done and not m.reference_loaded and m.load_reference(ref_paths[m.name]):
                log.info("%s: reference statistics from %s", m.name, ref_paths[m.name])
            if world > 1:   # the reference is added once (rank 0); no rank adds real frames on top of it
                m.reference_loaded = _broadcast(m.reference_loaded)

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    size, method = int(protocol.resolution), str(protocol.resize)
    model_res = protocol.get("model_resolution") or model_resolution(model)
    grid_rows: list[np.ndarray] = []
    n_grid = int(protocol.get("num_grid_videos", 4))
    samples, total = _samples_of(ds, datamodule, skip=set(done) | set(files.skipped), shard=(rank, world))
    pending: list[tuple] = []   # DDP: (vid, per_frame, frame_idx, grid row, nonfinite frames), gathered on rank 0
    progress = progress and rank == 0

    def good(stream):
        for vid, sample in stream:
            if "_error" in sample:    # could not be decoded: skipped, counted and named in metrics.json
                log.warning("eval %s: skipping video %s (%s)", protocol.name, vid, sample["_error"])
                files.skipped[vid] = str(sample["_error"])
                if world == 1:   # (DDP: rank 0 merges every rank's skipped videos at the end)
                    files.save_state(done, suite)
                continue
            yield vid, sample

    from toolbox.progress import Progress

    # a bar on a terminal, periodic plain lines (done/total, rate, ETA) when stdout is a log
    with Progress(total=total, desc=f"eval {protocol.name}", unit="videos", initial=len(done) + len(files.skipped),
                  enabled=progress) as bar:
        with torch.no_grad():
            for batch in _batches(good(samples), max(1, int(protocol.batch_size))):
                source = torch.stack([s["source"] for _, s in batch]).to(device)
                driving = torch.stack([s["driving"] for _, s in batch]).to(device)
                src_p, drv_p, pred = animate_at_model_resolution(
                    model, source, driving, size, method, model_res,
                    generator=clip_generator(seed, [vid for vid, _ in batch]), precision=precision, detect=detect,
                    cross=str(protocol.mode) != "self")
                for b, (vid, sample) in enumerate(batch):
                    T = pred.shape[1]
                    target = sample.get("target")   # absent for real cross-identity pairs (no ground truth)
                    h, w = sample["driving"].shape[-2:]
                    if min(h, w) < size or min(sample["source"].shape[-2:]) < size:
                        if vid not in files.upscaled:
                            files.upscaled.append(vid)
                    kp = sample.get("keypoints")
                    # self-reenactment: frame 0 is the source, so it is not scored unless the protocol says so
                    t0 = 1 if protocol.mode == "self" and not protocol.get("include_source_frame", False) and T > 1 else 0
                    frame_idx = _frame_indices(sample, T)[t0:]
                    p = pred[b, t0:]
                    finite = torch.isfinite(p).flatten(1).all(1).cpu()
                    n_bad = int((~finite).sum())
                    if n_bad:
                        files.nonfinite[vid] = n_bad
                        log.warning("eval %s: video %s: %d of %d generated frames have non-finite values (not "
                                    "scored; counted in nonfinite_frames)", protocol.name, vid, n_bad, len(finite))
                    keep = finite.nonzero().flatten()
                    masks = sample.get("masks")
                    if isinstance(masks, dict):
                        masks = {k: resize_frames((v[:, None] if v.dim() == 3 else v)[t0:].float().to(device), size,
                                                  "bilinear")[keep.to(device)] for k, v in masks.items()
                                 if k in ("hand", "face")}
                    else:
                        masks = None
                    tgt = None if target is None else _resize_video(target[t0:].to(device), size, method)
                    fb = FrameBatch(
                        pred=p[keep.to(p.device)], target=None if tgt is None else tgt[keep.to(tgt.device)],
                        source=src_p[b], driving=drv_p[b, t0:][keep.to(drv_p.device)],
                        keypoints=None if kp is None else _scale_points(kp[t0:], h, w, size)[keep],
                        pred_keypoints=None, video_id=vid, masks=masks,
                        frame_index=keep.tolist())
                    if keypoint_locator is not None:
                        fb.pred_keypoints = keypoint_locator(fb.pred)
                    per_frame = {n: np.full(len(finite), np.nan) for n in names}
                    if len(keep):
                        for n, vals in suite.evaluate(fb).items():
                            per_frame[n][keep.numpy()] = vals
                    row = None
                    if len(grid_rows) + sum(q[3] is not None for q in pending) < n_grid and len(keep):
                        from lit_models.common.visual import grid_frames

                        row = grid_frames(fb.source[None], fb.driving[None], fb.pred[None],
                                          None if fb.target is None else fb.target[None], max_frames=16)
                    if world > 1:
                        pending.append((vid, per_frame, frame_idx, row, n_bad))
                    else:
                        files.append(vid, per_frame, frame_idx, nonfinite_frames=n_bad)
                        done.append(vid)
                        files.save_state(done, suite)
                        if row is not None:
                            grid_rows.append(row)
                    bar.update()
    if was_training and hasattr(model, "train"):
        model.train()
    if world > 1:
        _gather_on_rank0(pending, files, done, suite, grid_rows, n_grid, rank, world)
        if rank != 0:   # rank 0 aggregates and writes; the others get its result
            return _broadcast(None)
    if not done:
        raise RuntimeError(f"protocol {protocol.name}: the test set yielded no videos"
                           + (f" ({len(files.skipped)} could not be decoded: {files.skipped})" if files.skipped else ""))

    # aggregate: per-frame metrics as the mean over all frames (NaN = undefined frames skipped), dataset metrics
    import pandas as pd

    frames = pd.read_csv(run_dir / PER_FRAME)
    metrics: dict[str, float] = {n: nanmean(frames[n].to_numpy()) for n in names}
    for m in suite.dataset_metrics:
        metrics[m.name] = m.compute()
        if m.name in ref_paths and not m.reference_loaded:
            m.save_reference(ref_paths[m.name])
    dataset_facts = {m.name: m.facts for m in suite.dataset_metrics if hasattr(m, "facts")}
    model_stats = _model_stats(model)
    metrics.update(model_stats)
    grid = None
    if grid_rows:
        grid = run_dir / GRID
        from lit_models.common.visual import write_video

        T = min(g.shape[0] for g in grid_rows)
        W = max(g.shape[2] for g in grid_rows)
        strip = np.concatenate([np.pad(g[:T], ((0, 0), (0, 0), (0, W - g.shape[2]), (0, 0))) for g in grid_rows], axis=1)
        try:
            write_video(strip, grid)
        except Exception as err:  # encoding is a convenience; the numbers are what matter
            log.warning("could not write %s: %s", run_dir / GRID, err)
    nonfinite_metrics = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    result = {
        "protocol": str(protocol.name), "protocol_hash": phash, "metrics": metrics,
        "overrides": list(overrides or []), "ckpt": ckpt, "model": _model_name(model),
        "weights": getattr(model, "loaded_weights", None),   # ema / raw (lit_models.registry.load_model)
        "model_resolution": model_res, "resolution": size, "model_id": model_id, "data_fingerprint": data_id,
        "device": str(device), "dtype": model_dtype(model), "precision": precision,
        "local_landmarks": settings["local_landmarks"], "run_settings": settings,
        "cross_identity_animate": (model.cross_identity_animate_kwargs() if str(protocol.mode) != "self"
                                   and hasattr(model, "cross_identity_animate_kwargs") else None),
        "standin": suite.standin, "num_videos": len(done), "num_frames": int(len(frames)),
        "nonfinite_frames": int(sum(files.nonfinite.values())), "nonfinite_videos": len(files.nonfinite),
        "upscaled_videos": len(files.upscaled), "skipped_videos": len(files.skipped),
        "skipped": dict(files.skipped), "upscaled": list(files.upscaled),
        "protocol_config": OmegaConf.to_container(protocol, resolve=True), **facts, **suite.facts,
    }
    if nonfinite_metrics:   # JSON has no NaN / Infinity: written as null, named here
        result["undefined_metrics"] = nonfinite_metrics
    if model_stats:
        result["model_stats"] = sorted(model_stats)
    if dataset_facts:   # e.g. FVD: clips per side, videos too short for a clip
        result["dataset_metric_facts"] = dataset_facts
    atomic_write_json(run_dir / METRICS, result, strict=True)
    _log_results(loggers, str(protocol.name), metrics, run_dir, grid, step=log_step)
    if world > 1:
        _broadcast(result)
    return result


# ---- DDP: shard the test set over the ranks, gather on rank 0 ---------------------------------------------------
def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather_on_rank0(pending, files: "ResultFiles", done: list[str], suite: Suite, grid_rows: list, n_grid: int,
                     rank: int, world: int) -> None:
    """Collect every rank's scored videos on rank 0 and write them in test-set order (rank r scored the videos
    r, r + world, …, so video k is ``gathered[k % world][k // world]``); sum the dataset metrics' running states
    (FID's feature sums / counts) over the ranks into rank 0's metric. Every video lands exactly once: the shards
    are disjoint strides with no padding, and a video id seen twice is an error."""
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, pending)
    notes = [None] * world   # per-rank bookkeeping: clips that failed to decode, clips smaller than the protocol's
    dist.all_gather_object(notes, {"skipped": dict(files.skipped), "upscaled": list(files.upscaled)})
    states = [None] * world
    dist.all_gather_object(states, {m.name: m.state_dict() for m in suite.dataset_metrics})
    if rank != 0:
        return None
    total = sum(len(g) for g in gathered)
    ordered = [gathered[k % world][k // world] for k in range(total)]
    ids = [v for v, *_ in ordered]
    if len(set(ids)) != len(ids) or set(ids) & set(done):
        raise RuntimeError("DDP evaluation: a video was scored twice (ranks' shards overlap)")
    for note in notes:
        files.skipped.update(note["skipped"])
        files.upscaled.extend(v for v in note["upscaled"] if v not in files.upscaled)
    for vid, per_frame, frame_idx, row, n_bad in ordered:
        if n_bad:
            files.nonfinite[vid] = int(n_bad)
        files.append(vid, per_frame, frame_idx, nonfinite_frames=n_bad)
        done.append(vid)
        if row is not None and len(grid_rows) < n_grid:
            grid_rows.append(row)
    for m in suite.dataset_metrics:
        merged = {k: v for k, v in states[0][m.name].items()}
        for other in states[1:]:
            for k, v in other[m.name].items():
                if torch.is_tensor(v):
                    merged[k] = merged[k] + v
        m.load_state_dict(merged)
        if hasattr(getattr(m, "metric", None), "distributed_available_fn"):   # already summed: no second sync
            m.metric.distributed_available_fn = lambda: False
    files.save_state(done, suite)
    return None


def merge_extra_protocols(run_dir, extra: dict[str, dict]) -> dict:
    """Add extra protocols' results (``run_evaluation`` returns, keyed by a name) to ``run_dir/metrics.json``.

    Their metrics become ``<name>/<metric>``; ``extra_protocols[name]`` records the protocol, its hash, where its
    files are and its video / frame counts; ``standin`` is true when any protocol used a stand-in network. Tables
    only group runs whose main and extra protocol hashes all agree (``eval.table``)."""
    import json

    from toolbox.io import atomic_write_json

    run_dir = Path(run_dir)
    main = json.loads((run_dir / METRICS).read_text())
    main.setdefault("extra_protocols", {})
    for name, res in extra.items():
        if "/" in name:
            raise ValueError(f"extra protocol name {name!r} must not contain '/'")
        main["metrics"] = {k: v for k, v in main["metrics"].items() if not k.startswith(f"{name}/")}
        main["metrics"].update({f"{name}/{k}": v for k, v in res["metrics"].items()})
        main["extra_protocols"][name] = {
            "protocol": res["protocol"], "protocol_hash": res["protocol_hash"], "dir": f"eval/{name}",
            "num_videos": res.get("num_videos"), "num_frames": res.get("num_frames"),
            "standin": bool(res.get("standin", False))}
        main["standin"] = bool(main.get("standin", False)) or bool(res.get("standin", False))
    atomic_write_json(run_dir / METRICS, main, strict=True)
    return main


def merge_model_diagnostics(run_dir, diagnostics: dict[str, float], source: str) -> dict:
    """Add a model's own evaluation diagnostics (e.g. MRFA's keypoint-motion errors) to ``run_dir/metrics.json``:
    they join ``metrics`` (table columns) and are listed under ``model_diagnostics`` with where they come from."""
    import json

    from toolbox.io import atomic_write_json

    run_dir = Path(run_dir)
    main = json.loads((run_dir / METRICS).read_text())
    clash = sorted(set(diagnostics) & set(main["metrics"]) - set(main.get("model_diagnostics", {}).get("names", [])))
    if clash:
        raise ValueError(f"model diagnostics {clash} would overwrite protocol metrics of the same name")
    main["metrics"].update({k: float(v) for k, v in diagnostics.items()})
    main["model_diagnostics"] = {"names": sorted(diagnostics), "source": source}
    atomic_write_json(run_dir / METRICS, main, strict=True)
    return main
