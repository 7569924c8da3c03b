"""X-Portrait's local control input: the driving frame restricted to eye and mouth patches, ``D_t ⊙ M_t``.

Two patch rules (``local_patch_mode``):

* ``official`` (bytedance/X-Portrait ``extract_local_feature_from_single_img``): three square patches of side
  ``local_patch_size`` of the image (128² at 512²) centred on the mean of the 68-point landmarks ``[43:48]``,
  ``[37:42]`` and ``[49:68]`` (Python slices, as the official code takes them), centres kept a half patch inside
  the image; the local image is the driving frame inside the patches and −1 outside.
* ``box`` (ours): the union of boxes around each region's landmarks, grown by ``region_margin``; 0 outside.

Landmarks come with the batch (``keypoints``, normalised to [0, 1]); where none are known (or not finite) the
patches sit on the fixed face-centred boxes. Landmark layouts are recognised by their count: the iBUG 68-point
layout (dlib, insightface) and SynthFaces' 29 named keypoints. No face detector runs here (``lit_models`` does not
import ``datamodules``): callers that want detected landmarks pass them as ``keypoints``.
"""
from __future__ import annotations

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


def boxes_to_mask(boxes: torch.Tensor, size: int, half_open: bool = False) -> torch.Tensor:
    """boxes N×R×4 in [0, 1] → N×1×size×size float mask (union of boxes, pixel centres at (i + 0.5) / size;
    ``half_open``: [x0, x1) — a box of side k/size then covers exactly k pixels, as the official slices do)."""
    dt = torch.float64 if half_open else boxes.dtype                     # official: exact pixel counts
    c = (torch.arange(size, dtype=dt, device=boxes.device) + 0.5) / size
    x0, y0, x1, y1 = (boxes[..., i, None].to(dt) for i in range(4))      # N×R×1
    hi = torch.lt if half_open else torch.le
    inx = (c >= x0) & hi(c, x1)                                          # N×R×W
    iny = (c >= y0) & hi(c, y1)                                          # N×R×H
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


# official patch centres: the landmark slices core/test_xportrait.py averages (68-point layout); other layouts use
# their region means
OFFICIAL_CENTRE_SLICES: dict[int, list[list[int]]] = {
    68: [list(range(43, 48)), list(range(37, 42)), list(range(49, 68))],
    29: list(REGION_LAYOUTS[29].values()),
}


def official_patch_masks(num: int, size: int, keypoints: Optional[torch.Tensor], fixed_boxes: Sequence[Sequence[float]],
                         patch_size: float = 0.25, device=None) -> torch.Tensor:
    """N×1×size×size masks of three ``patch_size``-sided squares centred on the official landmark means (clamped a
    half patch inside the image as the official code clamps); the fixed boxes' centres where landmarks are missing,
    not finite or of an unknown layout. The official code also rounds centres to its 256² landmark grid; this does
    not (identical for landmarks on that grid)."""
    fixed = torch.tensor(np.asarray(fixed_boxes, dtype=np.float32), device=device)
    centres = ((fixed[:, :2] + fixed[:, 2:]) / 2)[None].expand(num, -1, -1)
    slices = None if keypoints is None else OFFICIAL_CENTRE_SLICES.get(int(keypoints.shape[1]))
    if slices is not None:
        if len(slices) != fixed.shape[0]:
            raise ValueError(f"fixed_boxes has {fixed.shape[0]} boxes; the landmark layout has {len(slices)} regions")
        kp = keypoints.to(device).float()
        found = torch.stack([kp[:, idx].mean(1) for idx in slices], 1)                  # N×3×2
        ok = torch.isfinite(found).all(-1, keepdim=True)
        centres = torch.where(ok, found, centres)
    half = patch_size / 2
    # the official clamp np.clip(centre_256, h, 255 − h) (landmarks on a 256² grid, h = half patch there), mapped to
    # [0, 1] with pixel centres at (i + 0.5) / size
    centres = centres.clamp(half + 0.5 / size, 1 - half - 1 / 256 + 0.5 / size)
    return boxes_to_mask(torch.cat([centres - half, centres + half], -1), size, half_open=True).float()
