"""``prepare crop``: cut talking-head clips to a stable, face-centred square crop (FOMM's ``crop-video.py`` recipe).

For each clip x^(c) = (x_0 … x_{N-1}):

1. detect faces every ``det_stride`` frames on a copy rescaled to ``det_max_side`` (``datamodules.face``);
2. track the main face: start with the largest face, then follow the detection with the best IoU to the last box;
   a track ends after more than ``max_gap`` consecutive sampled frames without it, and — as in FOMM — a new
   segment (tube) starts when the box drifts from the segment's first box (IoU < ``min_iou_initial``), so one
   fixed crop fits the whole segment;
3. per segment, one box (no jitter): centre = centre of the union of the tube's boxes (shifted up by
   ``shift_up`` × face size to include the forehead and hair), side = ``scale`` × the median face side + the
   extent the face moves (union − median); made square, shifted inside the frame, or padded with black when it
   is larger than the frame;
4. segments shorter than ``min_frames`` are dropped (reported), the others written as H.264 mp4 at
   ``resolution``² into ``DST/<identity>/<video>/<clip>_segNN.mp4`` with a ``.crop.json`` sidecar
   (``source``, ``box`` in source pixels, ``frames`` = [start, end) in source frames, ``fps``, ``resolution``, …).

Frames whose sampled detections had no face are reported per clip (``no_face_ranges``, ``frames_without_face``)
in ``DST/crop_report.json``; each clip's entry is also saved as ``DST/<identity>/<video>/.<clip>.crop_report.json``
so an interrupted run resumes where it stopped (``overwrite=False``).
"""
from __future__ import annotations

import json
import os
import re
import warnings
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from datamodules.prepare.pool import worker_pool
from datamodules.utils import atomic_write_json

REPORT_NAME = "crop_report.json"


@dataclass
class CropConfig:
    backend: str = "dlib"            # face detector backend (datamodules.face): dlib | insightface
    det_stride: int = 3              # detect on every k-th frame
    det_max_side: int = 480          # detection runs on frames downscaled to this longest side
    det_min_side: int = 320          # … and upscaled to this one (HOG misses faces < ~80 px)
    min_score: float = 0.0           # detector score threshold (backend units)
    min_face: float = 0.08           # ignore faces smaller than this fraction of the frame's short side
    track_iou: float = 0.3           # a detection continues the track when IoU(last box) ≥ this
    min_iou_initial: float = 0.25    # FOMM: new segment when IoU(segment's first box) < this
    max_gap: int = 1                 # tolerated consecutive sampled frames without the tracked face
    min_frames: int = 16             # shorter segments are dropped
    scale: float = 1.6               # crop side = scale × median face side (+ motion extent)
    shift_up: float = 0.1            # move the crop centre up by this × face side (forehead, hair)
    resolution: int = 256            # output frames are resolution × resolution
    crf: int = 18                    # libx264 quality
    preset: str = "medium"
    max_segment_frames: int = 0      # 0 = no limit; else long segments are split into pieces of this length
    overwrite: bool = False          # False: skip clips already done (resume)


# ------------------------------------------------------------------------------------------------ clip discovery
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._#@+=-]+", "_", name).strip("_") or "clip"


def list_clips(src: str | os.PathLike) -> list:
    """Clips under ``src``: loose video files directly in it (identity = video = file stem) + any layout that
    ``datamodules.layouts.discover`` recognises (fomm, nested, frames). ``src`` may also be one video file."""
    from datamodules.layouts import ClipRecord, discover
    from datamodules.video import VIDEO_EXTS

    src = Path(src)
    if src.is_file():
        loose, root = [src], src.parent
    elif src.is_dir():
        loose = [p for p in sorted(src.iterdir())
                 if p.is_file() and p.suffix.lower() in VIDEO_EXTS and not p.name.startswith(".")]
        root = src
    else:
        raise FileNotFoundError(f"{src} does not exist")
    records = [ClipRecord(path=str(p), identity=p.stem, video=f"{p.stem}/{p.stem}", clip_id=p.stem, kind="video")
               for p in loose]
    if src.is_dir():
        seen = {r.path for r in records}
        records += [r for r in discover(root, "auto") if r.path not in seen]
    return records


def output_names(record) -> tuple[str, str, str]:
    """(identity, video, clip) folder/file names of a record in the nested output layout."""
    identity = record.identity
    video = record.video
    for sep in ("/", "#"):
        if video.startswith(identity + sep):
            video = video[len(identity) + 1:]
    video = video.split("/")[-1] if "/" in video else video
    return _safe(identity), _safe(video), _safe(record.stem)


# ------------------------------------------------------------------------------------------------------ tracking
@dataclass
class Tube:
    """A run of sampled frames where the main face was tracked: indices and boxes [x0, y0, x1, y1]."""

    frames: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    misses: int = 0
    drift_split: bool = False        # started because the previous tube's box drifted (no gap in between)

    @property
    def first(self) -> np.ndarray:
        return self.boxes[0]

    @property
    def last(self) -> np.ndarray:
        return self.boxes[-1]


def track_tubes(detections: list[tuple[int, list[np.ndarray]]], cfg: CropConfig) -> list[Tube]:
    """Split sampled detections [(frame index, [boxes])] into tubes of the main face (see module doc)."""
    from datamodules.face import box_iou

    tubes: list[Tube] = []
    cur: Optional[Tube] = None
    for t, boxes in detections:
        match = None
        if cur is not None and boxes:
            ious = [box_iou(b, cur.last) for b in boxes]
            j = int(np.argmax(ious))
            if ious[j] >= cfg.track_iou:
                match = boxes[j]
        if cur is not None and match is not None:
            if box_iou(match, cur.first) < cfg.min_iou_initial:  # drifted: new tube with a new fixed box
                tubes.append(cur)
                cur = Tube(drift_split=True)
            cur.frames.append(t)
            cur.boxes.append(match)
            cur.misses = 0
            continue
        if cur is not None:
            cur.misses += 1
            if cur.misses <= cfg.max_gap:
                continue
            tubes.append(cur)  # lost for more than max_gap samples: close the tube
            cur = None
        if boxes:
            main = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            cur = Tube(frames=[t], boxes=[main])
    if cur is not None:
        tubes.append(cur)
    return tubes


def segment_box(boxes: list[np.ndarray], frame_hw: tuple[int, int], cfg: CropConfig) -> tuple[list[int], bool]:
    """One square crop [x0, y0, x1, y1] (integer source pixels, x1/y1 exclusive) for a tube; and whether it
    reaches outside the frame (then the outside is padded black)."""
    b = np.stack(boxes).astype(np.float64)
    h, w = frame_hw
    sides = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    med = float(np.median(sides))
    ux0, uy0, ux1, uy1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    motion = max((ux1 - ux0) - np.median(b[:, 2] - b[:, 0]), (uy1 - uy0) - np.median(b[:, 3] - b[:, 1]), 0.0)
    side = int(round(cfg.scale * med + motion))
    side = max(side, 2)
    cx, cy = (ux0 + ux1) / 2.0, (uy0 + uy1) / 2.0 - cfg.shift_up * med
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    # shift inside the frame along each axis where the square fits; pad where it does not
    x0 = min(max(x0, 0), w - side) if side <= w else int(round((w - side) / 2.0))
    y0 = min(max(y0, 0), h - side) if side <= h else int(round((h - side) / 2.0))
    box = [x0, y0, x0 + side, y0 + side]
    padded = x0 < 0 or y0 < 0 or box[2] > w or box[3] > h
    return box, padded


def crop_frame(frame: np.ndarray, box: list[int], resolution: int) -> np.ndarray:
    """Cut ``box`` (may exceed the frame: black padding) out of ``frame`` and resize to resolution²."""
    import cv2

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box
    side_w, side_h = x1 - x0, y1 - y0
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        patch = frame[y0:y1, x0:x1]
    else:
        patch = np.zeros((side_h, side_w, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side_w > resolution else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(patch), (resolution, resolution), interpolation=interp)


def _ranges(frames: list[int]) -> list[list[int]]:
    """Sorted frame indices → [[start, end), …] runs."""
    out: list[list[int]] = []
    for f in frames:
        if out and out[-1][1] == f:
            out[-1][1] = f + 1
        else:
            out.append([f, f + 1])
    return out


# ------------------------------------------------------------------------------------------------------ per clip
_DETECTORS: dict = {}


def _detector(backend: str):
    if backend not in _DETECTORS:
        from datamodules.face import get_face_detector

        _DETECTORS[backend] = get_face_detector(backend)
    return _DETECTORS[backend]


def plan_clip(reader, cfg: CropConfig, detector=None) -> dict:
    """Detect + track + segment one opened clip; returns the plan (segments with boxes, no-face frames)."""
    detector = detector or _detector(cfg.backend)
    n = reader.num_frames
    h, w = reader.size
    stride = max(1, int(cfg.det_stride))
    sampled = list(range(0, n, stride))
    min_face = cfg.min_face * min(h, w)
    detections = []
    for t, frame in zip(sampled, reader.iter_frames(0, n, stride)):
        boxes = [b.as_array() for b in detector.detect(frame, max_side=cfg.det_max_side, min_side=cfg.det_min_side,
                                                      min_score=cfg.min_score)
                 if min(b.width, b.height) >= min_face]
        detections.append((t, boxes))
    with_face = {t for t, boxes in detections if boxes}
    tubes = track_tubes(detections, cfg)
    last_sample = sampled[-1] if sampled else 0
    # a tube spans its first to its last detected sample; it extends to the clip's ends when it touches them, and
    # to the next tube's start when that one split off by drift (no frame without a face in between)
    spans = [[tube.frames[0], n if tube.frames[-1] == last_sample else tube.frames[-1] + 1] for tube in tubes]
    for i in range(1, len(tubes)):
        if tubes[i].drift_split:
            spans[i - 1][1] = spans[i][0]
    segments, covered = [], np.zeros(n, bool)
    for tube, (start, end) in zip(tubes, spans):
        pieces = [(start, end)]
        if cfg.max_segment_frames and end - start > cfg.max_segment_frames:
            L = cfg.max_segment_frames
            pieces = [(s, min(s + L, end)) for s in range(start, end, L)]
        for s, e in pieces:
            in_piece = [b for f, b in zip(tube.frames, tube.boxes) if s <= f < e] or tube.boxes
            box, padded = segment_box(in_piece, (h, w), cfg)
            seg = {"frames": [s, e], "box": box, "padded": padded, "detections": len(in_piece)}
            if e - s < cfg.min_frames:
                seg.update(kept=False, reason=f"too_short ({e - s} < min_frames={cfg.min_frames})")
            else:
                seg.update(kept=True)
            covered[s:e] = True
            segments.append(seg)
    # frames outside every tube: no tracked face there (or not confirmed at the tube's sampled boundary)
    no_face = np.flatnonzero(~covered).tolist()
    return {"num_frames": n, "size": [h, w], "fps": reader.fps, "sampled_frames": len(sampled),
            "sampled_without_face": len(sampled) - len(with_face), "segments": segments,
            "no_face_ranges": _ranges(no_face), "frames_without_face": len(no_face)}


def crop_clip(record, dst: str | os.PathLike, cfg: CropConfig, decoder: str = "pyav") -> dict:
    """Plan and write one clip; returns its report entry (also saved beside its outputs for resuming)."""
    from datamodules.prepare.encode import encode_mp4
    from datamodules.video import open_video

    dst = Path(dst)
    identity, video, clip = output_names(record)
    out_dir = dst / identity / video
    marker = out_dir / f".{clip}.crop_report.json"
    if not cfg.overwrite and marker.exists():
        entry = json.loads(marker.read_text())
        entry["resumed"] = True
        return entry
    entry: dict[str, Any] = {"source": str(record.path), "identity": identity, "video": video, "clip": clip}
    for stale in out_dir.glob(f"{glob_escape(clip)}_seg[0-9][0-9]*"):  # outputs of an earlier run of this clip
        stale.unlink()
    try:
        with open_video(record.path, decoder) as reader:
            entry.update(plan_clip(reader, cfg))
            for i, seg in enumerate(entry["segments"]):
                if not seg["kept"]:
                    continue
                name = f"{clip}_seg{i:02d}"
                s, e = seg["frames"]
                frames = (crop_frame(f, seg["box"], cfg.resolution) for f in reader.iter_frames(s, e))
                written = encode_mp4(frames, out_dir / f"{name}.mp4", reader.fps, crf=cfg.crf, preset=cfg.preset)
                seg["output"] = f"{identity}/{video}/{name}.mp4"
                seg["num_frames"] = written
                atomic_write_json(out_dir / f"{name}.crop.json", {
                    "source": str(record.path), "box": seg["box"], "frames": [s, e], "padded": seg["padded"],
                    "fps": reader.fps, "source_size": entry["size"], "resolution": cfg.resolution,
                    "num_frames": written, "identity": record.identity, "video": record.video,
                    "clip_id": record.clip_id, "box_frame": "source", "applied": True,
                    "detector": cfg.backend, "config": asdict(cfg),
                })
        kept = [s for s in entry["segments"] if s["kept"]]
        entry["segments_kept"] = len(kept)
        entry["frames_kept"] = int(sum(s["frames"][1] - s["frames"][0] for s in kept))
        entry["status"] = "ok" if kept else "no_segment"
        entry["reasons"] = sorted({s["reason"].split(" ")[0] for s in entry["segments"] if not s["kept"]}
                                  | ({"no_face"} if entry["frames_without_face"] else set())
                                  | ({"no_face_at_all"} if not entry["segments"] else set()))
    except Exception as e:  # one bad clip must not stop a dataset-scale run: it is reported
        entry.update(status="error", error=f"{type(e).__name__}: {e}", segments=[], segments_kept=0, frames_kept=0,
                     reasons=["error"])
    atomic_write_json(marker, entry)
    return entry


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _crop_job(args):
    record, dst, cfg, decoder = args
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    return crop_clip(record, dst, cfg, decoder)


def crop_dataset(src: str | os.PathLike, dst: str | os.PathLike, cfg: CropConfig | None = None,
                 workers: int = 1, decoder: str = "pyav", progress: bool = True, limit: int = 0) -> dict:
    """Crop every clip under ``src`` into ``dst``; writes and returns the report ``{"config", "clips", "summary"}``."""
    cfg = cfg or CropConfig()
    if cfg.resolution % 2:
        raise ValueError(f"resolution must be even for H.264 yuv420p, got {cfg.resolution}")
    records = list_clips(src)
    if limit:
        records = records[:limit]
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    jobs = [(r, dst, cfg, decoder) for r in records]
    entries: list[dict] = [None] * len(jobs)  # type: ignore[list-item]
    with _progress(progress, len(jobs), "crop") as advance:
        if workers > 1 and len(jobs) > 1:
            with worker_pool(workers) as pool:
                futures = {pool.submit(_crop_job, j): i for i, j in enumerate(jobs)}
                for fut in as_completed(futures):
                    entries[futures[fut]] = fut.result()
                    advance()
        else:
            for i, j in enumerate(jobs):
                entries[i] = _crop_job(j)
                advance()
    report = {"source": str(src), "config": asdict(cfg), "clips": entries, "summary": summarize(entries)}
    atomic_write_json(dst / REPORT_NAME, report)
    return report


def summarize(entries: list[dict]) -> dict:
    from collections import Counter

    reasons = Counter(r for e in entries for r in e.get("reasons", []))
    return {"clips": len(entries), "clips_with_output": sum(1 for e in entries if e.get("segments_kept")),
            "segments_kept": sum(e.get("segments_kept", 0) for e in entries),
            "segments_dropped": sum(1 for e in entries for s in e.get("segments", []) if not s.get("kept")),
            "frames_kept": sum(e.get("frames_kept", 0) for e in entries),
            "frames_without_face": sum(e.get("frames_without_face", 0) for e in entries),
            "errors": sum(1 for e in entries if e.get("status") == "error"), "reasons": dict(reasons)}


class _progress:
    """A rich progress bar (or nothing) as a context manager yielding ``advance()``."""

    def __init__(self, enabled: bool, total: int, what: str):
        self.enabled, self.total, self.what, self._p = enabled, total, what, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(TextColumn(f"[bold]{self.what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._p.start()
        task = self._p.add_task(self.what, total=self.total)
        return lambda: self._p.advance(task)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.stop()


def print_report(report: dict) -> None:
    """A rich table: one row per clip (segments kept, frames kept, frames without a face, reasons)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prepare crop: {report['source']}")
    for col in ("clip", "frames", "kept seg", "kept frames", "no-face frames", "status / reasons"):
        table.add_column(col, justify="left" if col in ("clip", "status / reasons") else "right")
    for e in report["clips"]:
        reasons = ", ".join(e.get("reasons", [])) or "-"
        status = e.get("status", "?") + (f" ({e['error']})" if e.get("error") else "") + f": {reasons}"
        table.add_row(f"{e['identity']}/{e['video']}/{e['clip']}", str(e.get("num_frames", "?")),
                      str(e.get("segments_kept", 0)), str(e.get("frames_kept", 0)),
                      str(e.get("frames_without_face", 0)), status)
    console = Console()
    console.print(table)
    console.print(json.dumps(report["summary"]))
