"""Region metrics of InterAnimate's evaluation (pure functions the evaluation suite can import).

* ``contact_region(hand, face, r)``: pixels within ``r`` px (Chebyshev) of both the hand and the face masks — the
  hand–face contact region; frames without contact have an empty region (metrics NaN there).
* ``masked_l1(x, y, M) = Σ M|x − y| / (3 ΣM)``.
* ``masked_ssim(x, y, M)``: the SSIM map (gaussian σ = 1.5, 11 taps, data range 1, as ``eval.metrics.SSIM``)
  averaged over the region's pixels.
* ``masked_lpips(lpips, x, y, M)``: LPIPS on the region's bounding box (crop resized to ``size``²).
* ``mean_abs_cosine(L)``: mean |cos| between distinct learned latents (``interaction``).

All take N×C×H×W tensors in [0, 1] and N×1×H×W masks; they return N values.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lit_models.interanimate.interaction import mean_abs_cosine  # noqa: F401  (re-exported for the eval suite)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) if radius > 0 else mask.float()


def contact_region(hand: torch.Tensor, face: torch.Tensor, radius: int = 3) -> torch.Tensor:
    return ((dilate(hand > 0.5, radius) > 0) & (dilate(face > 0.5, radius) > 0)).float()


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float().expand_as(x)
    den = m.flatten(1).sum(1)
    num = (m * (x.float() - y.float()).abs()).flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(den, math.nan))


def masked_ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, sigma: float = 1.5,
                kernel_size: int = 11) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, smap = structural_similarity_index_measure(x.double(), y.double(), gaussian_kernel=True, sigma=sigma,
                                                  kernel_size=kernel_size, data_range=1.0, reduction="none",
                                                  return_full_image=True)
    m = mask.double().expand_as(smap)
    den = m.flatten(1).sum(1)
    num = (m * smap).flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(den, math.nan)).float()


def masked_lpips(lpips, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, size: int = 64) -> torch.Tensor:
    """``lpips``: a callable (N×3×H×W, N×3×H×W in [0, 1]) → N distances, e.g. ``eval.metrics.LPIPS('alex')``."""
    out = []
    for i in range(x.shape[0]):
        ys, xs = torch.nonzero(mask[i, 0] > 0, as_tuple=True)
        if ys.numel() == 0:
            out.append(math.nan)
            continue
        box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        crop = lambda im: F.interpolate(im[i:i + 1, :, box[0], box[1]].float(), size=(size, size),  # noqa: E731
                                        mode="bilinear", align_corners=False)
        out.append(float(lpips(crop(x), crop(y))[0]))
    return torch.tensor(out)


def region_metrics(pred: torch.Tensor, target: torch.Tensor, hand: torch.Tensor, face: torch.Tensor,
                   radius: int = 3, lpips=None) -> dict[str, torch.Tensor]:
    """Per-frame ``l1_contact``, ``ssim_contact`` (and ``lpips_<net>_contact`` with an LPIPS callable)."""
    region = contact_region(hand, face, radius)
    res = {"l1_contact": masked_l1(pred, target, region), "ssim_contact": masked_ssim(pred, target, region)}
    if lpips is not None:
        res[f"{getattr(lpips, 'name', 'lpips')}_contact"] = masked_lpips(lpips, pred, target, region)
    return res
