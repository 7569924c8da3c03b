"""The frames the pose-evaluation equality tests score (shared with the golden-generation script, see
tests/golden/pose_eval/NOTES.md): the first frames of three real clips, centre-cropped, resized to 256² with the
protocols' resize (bilinear, antialias) and quantised to uint8 as the evaluation does (``FrameBatch._u8``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CLIPS = ("talkinghead1kh_r0c0.mp4", "single_face.mp4", "hand_over_face_pexels.mp4")
FRAMES = (0, 3, 6, 9, 12, 15)
SIZE = 256


def decode(path: Path, indices=FRAMES) -> np.ndarray:
    import av

    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in indices:
                out.append(f.to_ndarray(format="rgb24"))
            if i >= max(indices):
                break
    return np.stack(out)


def clip_frames(path: Path, size: int = SIZE) -> np.ndarray:
    """T×size×size×3 uint8."""
    from eval.runner import resize_frames

    raw = decode(path)
    h, w = raw.shape[1:3]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    x = torch.from_numpy(np.ascontiguousarray(raw[:, y0:y0 + s, x0:x0 + s])).permute(0, 3, 1, 2).float() / 255
    x = resize_frames(x, size, "bilinear_antialias")
    return (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def all_clip_frames(clips_dir: Path) -> dict[str, np.ndarray]:
    return {Path(c).stem: clip_frames(clips_dir / c) for c in CLIPS}


def generated(frames: np.ndarray) -> dict[str, np.ndarray]:
    """The two "generated" videos scored against each clip: copy-source (frame 0 repeated) and the clip reversed."""
    return {"copy": np.repeat(frames[:1], len(frames), 0), "rev": frames[::-1].copy()}
