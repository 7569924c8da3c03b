"""``prepare th1kh`` / ``prepare celebvhq`` / ``prepare hdtf``: cut face tubes out of raw videos with the published annotations, by the
rules of the official scripts (which run FFmpeg's ``crop`` filter).

* TalkingHead-1KH (``videos_crop.py``): one tube per line ``video_name,H,W,S,E,L,T,R,B`` of
  ``*_video_tubes.txt``; frames ``S … E`` (inclusive: ``trim=start_frame=S:end_frame=E+1``) of
  ``RAW/<video_name>.mp4`` (the 1-minute pieces of ``videos_split.sh``), the box scaled from ``H × W`` to the file
  with ``int(T / H * h)`` … , saved as ``OUT/<video_name>_S{S}_E{E}_L{L}_T{T}_R{R}_B{B}.mp4`` at the crop's size.
* CelebV-HQ (``download_and_process.py: process_ffmpeg``): one clip per entry of ``celebvhq_info.json``
  ``clips``: the normalised box expanded by 0.02 (clamped to [0, 1]), scaled with Python's ``round``, made square
  (side ``2 · (min(h, w) // 2)`` about the centre), frames from ``start_sec`` to ``end_sec`` as FFmpeg's output
  options ``-ss / -to`` keep them (timestamps written ``HH:MM:SS.cc`` with the centiseconds truncated, as the
  official ``secs_to_timestr``), saved as ``OUT/<clip>.mp4``.

* HDTF (no official processing code; its README, method 1): ``read_hdtf`` — the time spans of
  ``*_annotion_time.txt`` as clips ``<video>_<k>``, the fixed ``crop_wh`` window, resized to 512².

FFmpeg's crop (``libavfilter/vf_crop.c``, not ``exact``): ``w, h, x, y`` rounded to the nearest integer
(``lrint``), the box moved inside the frame, then ``w, h, x, y`` rounded down to the chroma grid (even for
yuv420p). Frames are decoded with PyAV (the RGB of FFmpeg's CLI), cropped on that grid, and written as H.264
(``--format mp4``, libx264 CRF 23 / preset medium at the source rate: FFmpeg's defaults) or lossless PNG folders
(``--format png``). The official outputs also carry the audio (CelebV-HQ) — ours are video only. A missing or
unreadable video is skipped and named in ``OUT/prepare_<dataset>_report.json``; done tubes are not redone.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.prepare.pool import worker_pool
from datamodules.utils import atomic_write_json

log = logging.getLogger("portraitlab.prepare")
FORMATS = ("mp4", "png")
MP4_CRF, MP4_PRESET = 23, "medium"        # ffmpeg's libx264 defaults (the official scripts set no quality)


@dataclass
class Tube:
    """One output clip: which raw video, which frames, which crop."""

    name: str                          # output file name (…mp4)
    video: str                         # raw file stem
    rule: str                          # th1kh | celebvhq: how ``box`` becomes FFmpeg's crop (``crop_of``)
    box: tuple                         # th1kh: (H, W, L, T, R, B); celebvhq: normalised (top, bottom, left, right)
    frames: Optional[tuple] = None     # (first, last) frame indices, inclusive (TalkingHead-1KH)
    seconds: Optional[tuple] = None    # (ss, to) output seek bounds in seconds (CelebV-HQ, HDTF)
    resize: Optional[int] = None       # output side (HDTF: 512)


# ------------------------------------------------------------------------------------------------- FFmpeg's crop
def _lrint(v: float) -> int:
    return int(np.rint(float(v)))


def ffmpeg_crop_box(x: float, y: float, w: float, h: float, frame_w: int, frame_h: int, hsub: int = 1,
                    vsub: int = 1) -> tuple[int, int, int, int]:
    """(x, y, w, h) in pixels as FFmpeg's crop filter applies ``crop=w:h:x:y`` to a frame with chroma
    subsampling ``2^hsub × 2^vsub`` (yuv420p: 1, 1)."""
    w, h = _lrint(w), _lrint(h)
    if w <= 0 or h <= 0 or w > frame_w or h > frame_h:
        raise ValueError(f"crop {w}×{h} does not fit the {frame_w}×{frame_h} frame")
    w &= ~((1 << hsub) - 1)
    h &= ~((1 << vsub) - 1)
    x, y = _lrint(x), _lrint(y)
    x, y = max(x, 0), max(y, 0)
    if x + w > frame_w:
        x = frame_w - w
    if y + h > frame_h:
        y = frame_h - h
    x &= ~((1 << hsub) - 1)
    y &= ~((1 << vsub) - 1)
    return x, y, w, h


def crop_of(tube: Tube, h: int, w: int) -> tuple:
    """(x, y, w, h) given to FFmpeg's crop filter for a ``h × w`` video."""
    if tube.rule == "th1kh":
        H, W, L, T, R, B = tube.box
        t, b, l, r = int(T / H * h), int(B / H * h), int(L / W * w), int(R / W * w)
        return l, t, r - l, b - t
    if tube.rule == "hdtf":
        ref_h, x, y, bw, bh = tube.box
        k = h / ref_h if ref_h else 1.0           # the box is given at the reference height (xx_resolution.txt)
        return x * k, y * k, bw * k, bh * k
    return celebvhq_square(tube.box, h, w)


# ------------------------------------------------------------------------------------------------ annotations
def read_th1kh_tubes(path: str | os.PathLike) -> list[Tube]:
    """``video_name,H,W,S,E,L,T,R,B`` lines (TalkingHead-1KH ``data_list/*_video_tubes.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tube file {path} does not exist")
    tubes = []
    for k, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(",")
        if len(parts) != 9:
            raise ValueError(f"{path}: line {k}: {len(parts)} fields, expected video_name,H,W,S,E,L,T,R,B")
        try:
            H, W, S, E, L, T, R, B = (int(v) for v in parts[1:])
        except ValueError:
            raise ValueError(f"{path}: line {k}: H,W,S,E,L,T,R,B must be integers: {line.strip()!r}") from None
        name = f"{parts[0]}_S{S}_E{E}_L{L}_T{T}_R{R}_B{B}.mp4"
        tubes.append(Tube(name, parts[0], "th1kh", (H, W, L, T, R, B), frames=(S, E)))
    return tubes


def celebvhq_timestr(secs: float) -> str:
    """``HH:MM:SS.cc`` as the official ``secs_to_timestr`` writes it (centiseconds truncated)."""
    hrs = secs // 3600
    mins = (secs - hrs * 3600) // 60
    return f"{int(hrs):02d}:{int(mins):02d}:{int(secs % 60):02d}.{int((secs - int(secs)) * 100):02d}"


def parse_timestr(s: str) -> Fraction:
    """FFmpeg's reading of ``HH:MM:SS.frac`` (exact)."""
    hh, mm, ss = s.split(":")
    return int(hh) * 3600 + int(mm) * 60 + Fraction(ss)


def celebvhq_square(bbox: tuple, height: int, width: int) -> tuple:
    """(x, y, w, h) given to FFmpeg: expand 0.02 and clamp, scale with ``round``, square of side
    ``2 · (min(h, w) // 2)`` about the centre (``to_square(denorm(expand(bbox, 0.02)))``)."""
    top, bottom, left, right = bbox
    top, bottom = max(top - 0.02, 0), min(bottom + 0.02, 1)
    left, right = max(left - 0.02, 0), min(right + 0.02, 1)
    top, bottom, left, right = round(top * height), round(bottom * height), round(left * width), round(right * width)
    half = min(bottom - top, right - left) // 2
    ch, cw = (top + bottom) / 2, (left + right) / 2
    top, bottom, left, right = ch - half, ch + half, cw - half, cw + half
    return left, top, right - left, bottom - top


def read_celebvhq_info(path: str | os.PathLike) -> list[Tube]:
    """The clips of ``celebvhq_info.json`` (``{"clips": {name: {"ytb_id", "duration": {start_sec, end_sec},
    "bbox": {top, bottom, left, right}}}}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CelebV-HQ info file {path} does not exist")
    data = json.loads(path.read_text())
    if "clips" not in data:
        raise ValueError(f"{path}: no 'clips' key (expected celebvhq_info.json)")
    tubes = []
    for name, v in data["clips"].items():
        try:
            bbox = (v["bbox"]["top"], v["bbox"]["bottom"], v["bbox"]["left"], v["bbox"]["right"])
            ss, to = v["duration"]["start_sec"], v["duration"]["end_sec"]
            vid = v["ytb_id"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: clip {name!r} lacks {e}") from None
        tubes.append(Tube(f"{name}.mp4", vid, "celebvhq", bbox, seconds=(parse_timestr(celebvhq_timestr(ss)), parse_timestr(celebvhq_timestr(to)))))
    return tubes


HDTF_SUBSETS = ("RD", "WDA", "WRA")
# sha256 of the published HDTF annotation files (MRzzm/HDTF, HDTF_dataset/); `prepare hdtf` reports any difference
HDTF_ANNOTATIONS_SHA256 = {
    "RD_annotion_time.txt": "6e0e3b8139697d64ce92f252c9eb62d268b9262c628682803b9aed282f2068a7",
    "RD_crop_wh.txt": "5887006297bc96b91af5f2dae51ffc2f46816dcf1018325666fda756dabeb6f6",
    "RD_resolution.txt": "b4797a0fada19918ffef4f39447675fe1187f48d1292955ecfb7e7754092e384",
    "WDA_annotion_time.txt": "b7fb834e95918d6e87deb7afc9da8dc1c1c17ab454dc33887fe16fe945586f61",
    "WDA_crop_wh.txt": "3a2c1ba0255e05ec4a3d2a47180f16b0eba1e60976ee146d0162b872e473e151",
    "WDA_resolution.txt": "b9dbc35320b09b57771ec79c1aedc3624bda872c51390232631cce3444e0c10d",
    "WRA_annotion_time.txt": "7a49a55a841a45ab41cd1ff64f18bb83e79fa5799d1178d3ca36490eed54f1ed",
    "WRA_crop_wh.txt": "fd08b34596f0b5d3df7859bac7f4fd339aaf35b466ee018b3fdb8feab75838f2",
    "WRA_resolution.txt": "10108707a870259fde4f404eb3ab1617bbece3bbb8a176eb1120db1c7d3d9fc5",
}


def check_pins(folder: str | os.PathLike, pins: dict) -> dict:
    """file → {"sha256", "pinned", "ok"} for the pinned files present in ``folder``."""
    import hashlib

    out = {}
    for name, want in pins.items():
        p = Path(folder) / name
        if p.is_file():
            got = hashlib.sha256(p.read_bytes()).hexdigest()
            out[name] = {"sha256": got, "pinned": want, "ok": got == want}
    return out


def _mmss(s: str) -> Fraction:
    parts = [int(v) for v in s.split(":")]
    out = 0
    for v in parts:
        out = out * 60 + v
    return Fraction(out)


def read_hdtf(annotation_dir: str | os.PathLike, subsets: tuple = HDTF_SUBSETS, resolution: int = 512) -> list[Tube]:
    """HDTF's published annotations (``HDTF_dataset/<subset>_annotion_time.txt``, ``_crop_wh.txt``,
    ``_resolution.txt``), method 1 of its README: clip k of ``<video>.mp4`` = its k-th ``mm:ss-mm:ss`` span, saved
    as ``<video>/<video>_<k>.mp4``; the fixed window ``min_width width min_height height`` of ``crop_wh`` (at the
    reference height of ``_resolution.txt``, scaled to the file's height), resized to ``resolution``²."""
    root = Path(annotation_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"HDTF annotation folder {root} does not exist (HDTF_dataset/ of the HDTF repo)")
    tubes = []
    for sub in subsets:
        files = {k: root / f"{sub}_{k}.txt" for k in ("annotion_time", "crop_wh", "resolution")}
        for k, f in files.items():
            if not f.is_file():
                raise FileNotFoundError(f"HDTF annotation file {f} does not exist")
        res = {}
        for line in files["resolution"].read_text().split("\n"):
            if line.strip():
                name, v = line.split()[:2]
                res[Path(name).stem] = int(v)
        boxes = {}
        for k, line in enumerate(files["crop_wh"].read_text().split("\n"), start=1):
            f = line.split()
            if not f:
                continue
            if len(f) != 5:
                raise ValueError(f"{files['crop_wh']}: line {k}: expected 'clip min_width width min_height height'")
            boxes[Path(f[0]).stem] = tuple(int(v) for v in f[1:])
        for k, line in enumerate(files["annotion_time"].read_text().split("\n"), start=1):
            f = line.split()
            if not f:
                continue
            video = Path(f[0]).stem
            for j, span in enumerate(f[1:]):
                try:
                    a, b = span.split("-")
                    ss, to = _mmss(a), _mmss(b)
                except ValueError:
                    raise ValueError(f"{files['annotion_time']}: line {k}: span {span!r} is not mm:ss-mm:ss") from None
                clip = f"{video}_{j}"
                if clip not in boxes:
                    continue            # a span without a crop window is not part of the dataset
                x, bw, y, bh = boxes[clip]
                tubes.append(Tube(f"{video}/{clip}.mp4", video, "hdtf", (res.get(video, 0), x, y, bw, bh),
                                  seconds=(ss, to), resize=resolution))
    return tubes


# ------------------------------------------------------------------------------------------------------ cutting
def _cut(tube: Tube, src: Path) -> tuple[list[np.ndarray], float]:
    import av

    with av.open(str(src)) as container:
        if not container.streams.video:
            raise ValueError(f"{src}: no video stream")
        stream = container.streams.video[0]
        cc = stream.codec_context
        desc = stream.format
        hsub = 1 if desc is None or desc.name.startswith(("yuv420", "yuvj420", "yuv422", "yuvj422", "nv12")) else 0
        vsub = 1 if desc is None or desc.name.startswith(("yuv420", "yuvj420", "nv12")) else 0
        x, y, w, h = ffmpeg_crop_box(*crop_of(tube, int(cc.height), int(cc.width)), int(cc.width), int(cc.height),
                                     hsub, vsub)
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        start = Fraction(container.start_time or 0, 1_000_000)
        out = []
        for i, frame in enumerate(container.decode(stream)):
            if tube.frames is not None:
                first, last = tube.frames
                if i > last:
                    break
                if i < first:
                    continue
            else:
                t = Fraction(frame.pts * stream.time_base) - start if frame.pts is not None else Fraction(i) / Fraction(fps)
                ss, to = tube.seconds
                if t >= to:
                    break
                if t < ss:
                    continue
            crop = np.ascontiguousarray(frame.to_ndarray(format="rgb24")[y:y + h, x:x + w])
            if tube.resize:
                import cv2

                r = int(tube.resize)
                crop = cv2.resize(crop, (r, r), interpolation=cv2.INTER_AREA if max(w, h) > r else cv2.INTER_CUBIC)
            out.append(crop)
    return out, fps


def _save(path: Path, frames: list[np.ndarray], fps: float, fmt: str) -> None:
    if fmt == "mp4":
        from datamodules.prepare.encode import encode_mp4

        encode_mp4(frames, path, fps=fps, crf=MP4_CRF, preset=MP4_PRESET)
        os.chmod(path, 0o644)
    else:
        from datamodules.prepare.vox import _write_png_folder

        _write_png_folder(path, frames)


def cut_tube(tube: Tube, video_folder: str, out: str, fmt: str) -> dict:
    """One tube → its report entry (never raises)."""
    entry = {"name": tube.name, "video": tube.video}
    dst = Path(out) / tube.name
    if dst.exists():
        return {**entry, "status": "done_before"}
    src = Path(video_folder) / f"{tube.video}.mp4"
    if not src.exists():
        return {**entry, "status": "missing_video", "source": str(src)}
    t0 = time.monotonic()
    try:
        frames, fps = _cut(tube, src)
    except Exception as e:  # noqa: BLE001 - one bad video must not stop a dataset-scale run
        return {**entry, "status": "unreadable_video", "source": str(src), "error": f"{type(e).__name__}: {e}"}
    if not frames:
        return {**entry, "status": "no_frames", "source": str(src)}
    try:
        _save(dst, frames, fps, fmt)
    except Exception as e:  # noqa: BLE001
        return {**entry, "status": "write_error", "error": f"{type(e).__name__}: {e}"}
    return {**entry, "status": "written", "num_frames": len(frames), "size": list(frames[0].shape[:2]),
            "seconds": round(time.monotonic() - t0, 2)}


def _job(args):
    return cut_tube(*args)


def prepare_tubes(dataset: str, annotations: str | os.PathLike, video_folder: str | os.PathLike,
                  out: str | os.PathLike, fmt: str = "mp4", workers: int = 1, progress: bool = True) -> dict:
    """``dataset`` ∈ {th1kh, celebvhq, hdtf}: every tube of ``annotations``; writes ``OUT/prepare_<dataset>_report.json``."""
    readers = {"th1kh": read_th1kh_tubes, "celebvhq": read_celebvhq_info, "hdtf": read_hdtf}
    if dataset not in readers:
        raise ValueError(f"dataset={dataset!r} is not one of {', '.join(readers)}")
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not Path(video_folder).is_dir():
        raise FileNotFoundError(f"--video-folder {video_folder} does not exist")
    tubes = readers[dataset](annotations)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(t, str(video_folder), str(out), fmt) for t in tubes]
    entries: list[dict] = []
    t0 = time.monotonic()

    def done(e):
        entries.append(e)
        if progress:
            log.info("[%d/%d] %s: %s (%.1f s elapsed)", len(entries), len(jobs), e["name"], e["status"],
                     time.monotonic() - t0)

    if workers > 1 and len(jobs) > 1:
        with worker_pool(workers) as pool:
            for fut in as_completed([pool.submit(_job, j) for j in jobs]):
                done(fut.result())
    else:
        for j in jobs:
            done(_job(j))
    order = {t.name: k for k, t in enumerate(tubes)}
    entries.sort(key=lambda e: order[e["name"]])
    from collections import Counter

    summary = {"tubes": len(entries), "by_status": dict(sorted(Counter(e["status"] for e in entries).items())),
               "frames_written": sum(e.get("num_frames", 0) for e in entries),
               "missing_videos": sorted({e["video"] for e in entries if e["status"] == "missing_video"}),
               "unreadable_videos": sorted({e["video"] for e in entries if e["status"] == "unreadable_video"})}
    report = {"dataset": dataset, "annotations": str(annotations), "video_folder": str(video_folder),
              "out": str(out), "format": fmt, "tubes": entries, "summary": summary}
    if dataset == "hdtf":
        pins = check_pins(annotations, HDTF_ANNOTATIONS_SHA256)
        report["annotations_sha256"] = pins
        summary["annotations_match_pins"] = all(v["ok"] for v in pins.values()) if pins else None
        for name, v in pins.items():
            if not v["ok"]:
                log.warning("%s differs from the published HDTF file (sha256 %s, pinned %s)", name, v["sha256"],
                            v["pinned"])
    atomic_write_json(out / f"prepare_{dataset}_report.json", report)
    return report
