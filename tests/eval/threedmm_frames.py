"""The frames the Deep3DFaceRecon equality tests score (shared with the golden-generation script, see
tests/golden/deep3d/NOTES.md): frames 0 and 9 of three real clips as the evaluation sees them
(``pose_eval_frames.clip_frames``: PyAV rgb24, centre square crop, bilinear-antialias resize to 256², uint8)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pose_eval_frames import CLIPS, FRAMES, clip_frames

PICK = (0, 3)      # positions in pose_eval_frames.FRAMES: frames 0 and 9


def golden_frames(clips_dir: Path) -> dict[str, np.ndarray]:
    """clip stem → 2×256×256×3 uint8."""
    assert FRAMES[PICK[1]] == 9
    return {Path(c).stem: clip_frames(clips_dir / c)[list(PICK)] for c in CLIPS}
