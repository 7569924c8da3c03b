"""H.264 mp4 encoding with PyAV (libx264, yuv420p), written atomically (temporary file, then rename)."""
from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np


# x264's macroblock-tree rate control, in the libx264 of PyAV's wheel on an AVX-512 CPU, can give other bytes for the
# same frames depending on what the process encoded before: every lab encode of training data turns it off, so a
# prepared or rendered dataset is a function of its inputs
X264_REPRODUCIBLE = "mbtree=0"


def fps_fraction(fps: float) -> Fraction:
    """A rational frame rate for the encoder (29.97 → 30000/1001)."""
    return Fraction(float(fps)).limit_denominator(1001) if fps and fps > 0 else Fraction(25)


def _encode(frames: Iterable[np.ndarray], target, fps: float, crf: int, preset: str) -> int:
    import av

    n = 0
    with av.open(target, mode="w", format="mp4") as out:
        stream = None
        for frame in frames:
            frame = np.ascontiguousarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frames must be H×W×3 uint8 RGB, got {frame.shape} {frame.dtype}")
            if stream is None:
                h, w = frame.shape[:2]
                if h % 2 or w % 2:
                    raise ValueError(f"yuv420p needs even frame sizes, got {w}×{h}")
                stream = out.add_stream("libx264", rate=fps_fraction(fps))
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.options = {"crf": str(int(crf)), "preset": preset, "g": "12",   # short GOP: cheap random access
                                  "x264-params": X264_REPRODUCIBLE}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
            n += 1
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            out.mux(packet)
    return n


def encode_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float, crf: int = 18,
               preset: str = "medium") -> int:
    """Encode RGB uint8 frames (even H, W) to ``path`` atomically; returns the number of frames written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.mp4", dir=path.parent)
    os.close(fd)
    try:
        n = _encode(frames, tmp, fps, crf, preset)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def encode_mp4_bytes(frames: Iterable[np.ndarray], fps: float, crf: int = 18, preset: str = "medium") -> bytes:
    """Encode RGB uint8 frames to an in-memory mp4."""
    buf = io.BytesIO()
    _encode(frames, buf, fps, crf, preset)
    return buf.getvalue()
