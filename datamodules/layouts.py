"""Clip discovery on disk: the set of clips {x^(c)} a dataset root holds, as ``ClipRecord``s.

Layouts:

* ``fomm`` — FOMM / VoxCeleb1: ``root/{train,test}/id#video#start#end.mp4`` (a ``.mp4`` may also be a folder of
  PNG frames, as in FOMM's preprocessed VoxCeleb). The folder is kept as ``split_hint``.
* ``nested`` — VoxCeleb2 / HDTF / CelebV-HQ: ``root/<identity>/<video>/<clip>.mp4`` (``root/<identity>/<clip>.mp4``
  and a flat ``root/<clip>.mp4``, one identity per file, tolerated).
* ``frames`` — folders of frames: ``root/<identity>/<clip>/*.png|jpg`` or ``root/<identity>/<video>/<clip>/``.
* ``auto`` — ``train/`` or ``test/`` folders → fomm; else video files → nested; else frame folders → frames.

Side files: ``root/meta/<stem>.npz`` (per-frame ``keypoints``, ``masks_hand``, ``masks_face``, e.g. SynthFaces) and
``<clip>.crop.json`` = ``{"box": [x0, y0, x1, y1]}`` beside a clip (crop=meta cuts that box). ``prepare crop`` writes
already-cropped clips whose sidecar also names its ``source`` video: the box then describes the source and the
clip is used whole.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.video import IMAGE_EXTS, VIDEO_EXTS, VideoReader, open_video

LAYOUTS = ("auto", "fomm", "nested", "frames", "shards")
SKIP_DIRS = {"meta", "cross", "__pycache__"}


@dataclass
class ClipRecord:
    """One clip. ``clip_id`` is the path relative to the root without extension (unique within a root)."""

    path: str
    identity: str
    video: str
    clip_id: str
    kind: str = "video"                 # video | frames
    split_hint: Optional[str] = None    # train | test from FOMM folders, else None
    meta: Optional[str] = None          # root/meta/<stem>.npz when present
    crop: Optional[str] = None          # <clip>.crop.json when present
    num_frames: int = 0                 # filled in by the scan
    fps: float = 0.0

    @property
    def stem(self) -> str:
        name = Path(self.path).name
        return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in VIDEO_EXTS else name

    def to_dict(self) -> dict:
        return asdict(self)


def _is_image_dir(p: Path) -> bool:
    try:
        return p.is_dir() and any(q.suffix.lower() in IMAGE_EXTS for q in p.iterdir())
    except OSError:
        return False


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name not in SKIP_DIRS


def _crop_sidecar(p: Path) -> Optional[str]:
    stem = p.name[: -len(p.suffix)] if p.suffix.lower() in VIDEO_EXTS else p.name
    side = p.parent / f"{stem}.crop.json"
    return str(side) if side.exists() else None


def _record(root: Path, p: Path, identity: str, video: str, kind: str, split_hint: Optional[str] = None) -> ClipRecord:
    rel = p.relative_to(root).as_posix()
    clip_id = rel[: -len(p.suffix)] if p.suffix.lower() in VIDEO_EXTS else rel
    rec = ClipRecord(path=str(p), identity=identity, video=video, clip_id=clip_id, kind=kind, split_hint=split_hint)
    meta = root / "meta" / f"{rec.stem}.npz"
    rec.meta = str(meta) if meta.exists() else None
    rec.crop = _crop_sidecar(p)
    return rec


def discover_fomm(root: Path) -> list[ClipRecord]:
    """``root/{train,test}/id#video#start#end.mp4`` (files or PNG folders); identity = the part before ``#``."""
    out = []
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if not _visible(p):
                continue
            is_video = p.is_file() and p.suffix.lower() in VIDEO_EXTS
            if not (is_video or _is_image_dir(p)):
                continue
            stem = p.name[: -len(p.suffix)] if p.suffix.lower() in VIDEO_EXTS else p.name
            parts = stem.split("#")
            identity = parts[0]
            video = "#".join(parts[:2]) if len(parts) > 1 else stem
            out.append(_record(root, p, identity, video, "video" if is_video else "frames", split_hint=split))
    return out


def discover_nested(root: Path) -> list[ClipRecord]:
    """``root/<identity>/<video>/<clip>.mp4`` (or ``root/<identity>/<clip>.mp4``)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if _visible(Path(n)))
        rel = d.relative_to(root).parts
        for name in sorted(filenames):
            p = d / name
            if name.startswith(".") or p.suffix.lower() not in VIDEO_EXTS:
                continue
            identity = rel[0] if rel else p.stem  # a flat folder of videos: one identity per file
            video = "/".join(rel[:2]) if len(rel) >= 2 else f"{identity}/{p.stem}"
            out.append(_record(root, p, identity, video, "video"))
    return out


def discover_frames(root: Path) -> list[ClipRecord]:
    """``root/<identity>/<clip>/*.png`` or ``root/<identity>/<video>/<clip>/*.png`` frame folders."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if _visible(Path(n)))
        rel = d.relative_to(root).parts
        if len(rel) < 2 or not any(Path(f).suffix.lower() in IMAGE_EXTS for f in filenames):
            continue
        identity = rel[0]
        video = "/".join(rel[:-1]) if len(rel) >= 3 else "/".join(rel)
        out.append(_record(root, d, identity, video, "frames"))
        dirnames[:] = []  # a frame folder is a leaf
    return out


def detect_layout(root: str | os.PathLike) -> str:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "fomm"
    if (root / "index.json").exists():  # litdata's shard index
        return "shards"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if _visible(Path(n))]
        if any(Path(f).suffix.lower() in VIDEO_EXTS for f in filenames):
            return "nested"
    return "frames"


def discover(root: str | os.PathLike, layout: str = "auto") -> list[ClipRecord]:
    """Every clip under ``root`` for ``layout`` (auto | fomm | nested | frames)."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "shards":
        raise ValueError("layout=shards has no files to discover: use datamodules.shards.ShardClipSource")
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    return {"fomm": discover_fomm, "nested": discover_nested, "frames": discover_frames}[layout](root)


class LocalClipSource:
    """Clips on a local (or mounted) file system: implements ``datamodules.video.ClipSource``."""

    def __init__(self, root: str | os.PathLike, layout: str = "auto", decoder: str = "pyav",
                 records: Optional[list[ClipRecord]] = None, threads: int = 0):
        self.root = Path(root)
        self.layout = detect_layout(self.root) if layout == "auto" else layout
        self.decoder = decoder
        self.threads = threads
        self.records = discover(self.root, self.layout) if records is None else records

    def open(self, record: ClipRecord) -> VideoReader:
        return open_video(record.path, self.decoder, threads=self.threads)

    def load_meta(self, record: ClipRecord) -> Optional[dict]:
        if not record.meta:
            return None
        with np.load(record.meta) as z:
            return {k: z[k] for k in z.files}

    def load_crop(self, record: ClipRecord) -> Optional[list[float]]:
        """The clip's crop box, or None. ``prepare crop`` writes *already cropped* clips whose sidecar names the
        ``source`` video the box refers to: such a clip needs no further box (None)."""
        if not record.crop:
            return None
        data = json.loads(Path(record.crop).read_text())
        src = data.get("source")
        if src is not None and Path(src).resolve() != Path(record.path).resolve():
            return None
        return [float(v) for v in data["box"]]
