"""Tiny test media made with PyAV: H.264 clips whose frames are distinguishable, frame folders, bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pattern(i: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Frame i: a smooth colour field plus a bright square whose position encodes i (survives H.264)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    c = rng.integers(40, 200, size=3)
    img = np.stack([(c[0] + xx * 60 // w) % 256, (c[1] + yy * 60 // h) % 256, np.full_like(xx, c[2])], -1)
    s = max(4, h // 6)
    x0 = (i * 3) % max(1, w - s)
    y0 = (i * 5) % max(1, h - s)
    img[y0:y0 + s, x0:x0 + s] = 255
    return img.astype(np.uint8)


def write_video(path, num_frames: int = 12, size=(48, 64), fps: int = 10, gop: int = 4, seed: int = 0,
                faststart: bool = False) -> Path:
    """Write an H.264 mp4 of ``num_frames`` pattern frames (size = (h, w), keyframe every ``gop`` frames)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.codec_context.gop_size = gop
        st.options = {"crf": "10", "preset": "ultrafast", "bf": "2", "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, h, w, seed), format="rgb24")
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path


def write_frames(folder, num_frames: int = 6, size=(48, 64), seed: int = 0, ext: str = ".png") -> Path:
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        cv2.imwrite(str(folder / f"{i:05d}{ext}"), cv2.cvtColor(pattern(i, *size, seed=seed), cv2.COLOR_RGB2BGR))
    return folder


def make_bad_files(folder, good_source=None) -> dict[str, Path]:
    """One file per skip reason; returns {expected_reason: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = good_source or write_video(folder / "_src.tmp.mp4", num_frames=24)
    data = Path(src).read_bytes()
    out = {}
    (p := folder / "empty.mp4").write_bytes(b"")
    out["empty"] = p
    (p := folder / "half.mp4").write_bytes(data[: len(data) // 2])
    out["truncated"] = p
    (p := folder / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["corrupt_or_not_video"] = p
    (p := folder / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    out["not_video"] = p
    out["too_short"] = write_video(folder / "short.mp4", num_frames=2)
    if good_source is None:
        Path(src).unlink()
    return out
