"""X-Portrait's local control input: the driving frame restricted to eye and mouth patches, ``D_t ⊙ M_t``.

``M_t`` is the union of boxes around the left eye, right eye and mouth landmarks (grown by a margin), or fixed
face-centred boxes when no landmarks are known. Landmark layouts are recognised by their count: the iBUG 68-point
layout (dlib, insightface) and SynthFaces' 29 named keypoints.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np
import torch

# region name -> landmark indices, per layout (keyed by the number of landmarks)
REGION_LAYOUTS: dict[int, dict[str, list[int]]] = {
    68: {"eye_left": list(range(36, 42)), "eye_right": list(range(42, 48)), "mouth": list(range(48, 68))},
    # SynthFaces (datamodules.synthfaces.renderer.KEYPOINT_NAMES): eye_left_* 9-13, eye_right_* 14-18, mouth 23-28
    29: {"eye_left": list(range(9, 14)), "eye_right": list(range(14, 19)), "mouth": list(range(23, 29))},
}


def region_boxes(keypoints: torch.Tensor, margin: float, min_size: float) -> Optional[torch.Tensor]:
    """keypoints N×K×2 in [0, 1] → boxes N×R×4 (x0, y0, x1, y1) in [0, 1], or None for an unknown layout.
    Rows whose landmarks are not finite get NaN boxes (callers fall back to fixed boxes)."""
    layout = REGION_LAYOUTS.get(int(keypoints.shape[1]))
    if layout is None:
        return None
    boxes = []
    for idx in layout.values():
        pts = keypoints[:, idx]
        lo, hi = pts.amin(1), pts.amax(1)
        size = (hi - lo).clamp_min(min_size)
        centre = (lo + hi) / 2
        half = size * (0.5 + margin)
        boxes.append(torch.cat([centre - half, centre + half], dim=-1))
    return torch.stack(boxes, 1).clamp(0, 1)


def boxes_to_mask(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """boxes N×R×4 in [0, 1] → N×1×size×size float mask (union of boxes, pixel centres at (i + 0.5) / size)."""
    c = (torch.arange(size, dtype=boxes.dtype, device=boxes.device) + 0.5) / size
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))             # N×R×1
    inx = (c >= x0) & (c <= x1)                                          # N×R×W
    iny = (c >= y0) & (c <= y1)                                          # N×R×H
    mask = (iny[..., :, None] & inx[..., None, :]).any(1)                # N×H×W
    return mask[:, None].to(boxes.dtype)


def local_patch_masks(num: int, size: int, keypoints: Optional[torch.Tensor], fixed_boxes: Sequence[Sequence[float]],
                      margin: float, min_size: float, device=None) -> torch.Tensor:
    """N×1×size×size masks of the eye / mouth patches from N×K×2 landmarks in [0, 1] (fixed boxes where missing)."""
    fixed = torch.tensor(np.asarray(fixed_boxes, dtype=np.float32), device=device)[None].expand(num, -1, -1)
    boxes = None if keypoints is None else region_boxes(keypoints.to(device).float(), margin, min_size)
    if boxes is None:
        boxes = fixed
    else:
        if boxes.shape[1] != fixed.shape[1]:
            raise ValueError(f"fixed_boxes has {fixed.shape[1]} boxes; the landmark layout has {boxes.shape[1]} regions")
        ok = torch.isfinite(boxes).all(-1).all(-1)
        boxes = torch.where(ok[:, None, None], boxes, fixed)
    return boxes_to_mask(boxes, size)


@functools.lru_cache(maxsize=1)
def _dlib_detector():
    """The dlib detector + 68-point predictor, built once per process (construction costs ~1-2 s)."""
    try:
        from datamodules.face import get_face_detector

        return get_face_detector("dlib")
    except Exception:                                     # noqa: BLE001 — any missing piece means: no detector
        return None


def detect_landmarks(frames: torch.Tensor) -> Optional[torch.Tensor]:
    """Landmarks of B×T×3×H×W frames in [0, 1] with ``datamodules.face`` (dlib, 68 points): B×T×68×2 in pixels,
    NaN where no face is found; None when the detector is unavailable."""
    detector = _dlib_detector()
    if detector is None:
        return None
    B, T = frames.shape[:2]
    out = torch.full((B, T, 68, 2), float("nan"))
    for b in range(B):
        for t in range(T):
            image = frames[b, t].detach().cpu()
            box = detector.largest(image)
            if box is not None:
                out[b, t] = torch.as_tensor(np.asarray(detector.landmarks68(image, box), dtype=np.float32))
    return out
