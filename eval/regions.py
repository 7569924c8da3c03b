"""Region metrics (InterAnimate's hand–face contact evaluation), pure functions + the suite's per-frame metrics.

* ``contact_region(hand, face, r)`` = dilate_r(hand) ∩ dilate_r(face): pixels within ``r`` px (Chebyshev) of both
  the hand and the face masks — the contact region M_t; frames without contact have an empty region (NaN there).
* ``masked_l1(x, y, M)``   = Σ M|x − y| / (3 ΣM)                                        → ``l1_contact``
* ``masked_ssim(x, y, M)`` = Σ M·SSIM(x, y) / ΣM, the SSIM map (gaussian σ = 1.5, 11 taps, data range 1, inputs
  reflect-padded, as torchmetrics' ``return_full_image``) averaged over the region   → ``ssim_contact``
* ``masked_lpips(lpips, x, y, M)``: LPIPS on the region's bounding box, crop resized to ``size``²
                                                                                        → ``lpips_<net>_contact``
* ``contact_rate`` = 1[M_t non-empty]: the fraction of scored frames that have a contact region at all.

All take N×C×H×W tensors in [0, 1] and N×1×H×W masks; they return N values. The masks are the target frames'
(SynthFaces renders them: ``masks`` {"hand", "face"} in the batch); frames of samples without masks are NaN.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from eval.metrics import FrameBatch, Metric, _require_target, ssim_map


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) if radius > 0 else mask.float()


def contact_region(hand: torch.Tensor, face: torch.Tensor, radius: int = 3) -> torch.Tensor:
    return ((dilate(hand > 0.5, radius) > 0) & (dilate(face > 0.5, radius) > 0)).float()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype).expand_as(values)
    den = m.flatten(1).sum(1)
    num = (m * values).flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(den, math.nan))


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_mean((x.float() - y.float()).abs(), mask)


def masked_ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    return _masked_mean(ssim_map(x.double(), y.double(), sigma=sigma, pad=True), mask).float()


def masked_lpips(lpips, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, size: int = 64) -> torch.Tensor:
    """``lpips``: a callable (N×3×H×W, N×3×H×W in [0, 1]) → N distances, e.g. ``eval.metrics.LPIPS('alex')``.
    Every frame's crop is resized to ``size``², so all crops go through the network in one call."""
    crops_x, crops_y, rows = [], [], []
    out = torch.full((x.shape[0],), math.nan, dtype=torch.float64)
    for i in range(x.shape[0]):
        ys, xs = torch.nonzero(mask[i, 0] > 0, as_tuple=True)
        if ys.numel() == 0:
            continue
        box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        for im, acc in ((x, crops_x), (y, crops_y)):
            acc.append(F.interpolate(im[i:i + 1, :, box[0], box[1]].float(), size=(size, size), mode="bilinear",
                                     align_corners=False))
        rows.append(i)
    if rows:
        out[rows] = torch.as_tensor(lpips(torch.cat(crops_x), torch.cat(crops_y))).double().cpu().flatten()
    return out


def region_metrics(pred: torch.Tensor, target: torch.Tensor, hand: torch.Tensor, face: torch.Tensor,
                   radius: int = 3, lpips=None, size: int = 64) -> dict[str, torch.Tensor]:
    """Per-frame ``l1_contact``, ``ssim_contact`` (and ``lpips_<net>_contact`` with an LPIPS callable)."""
    region = contact_region(hand, face, radius)
    res = {"l1_contact": masked_l1(pred, target, region), "ssim_contact": masked_ssim(pred, target, region)}
    if lpips is not None:
        res[f"{getattr(lpips, 'name', 'lpips')}_contact"] = masked_lpips(lpips, pred, target, region, size)
    return res


# ---- suite metrics -----------------------------------------------------------------------------------------------
CONTACT_KINDS = ("l1", "ssim", "lpips", "rate")


def frame_contact_region(fb: FrameBatch, radius: int) -> Optional[torch.Tensor]:
    """The contact region of ``fb``'s target frames (N×1×H×W), computed once per video; None without masks."""
    key = ("contact_region", radius)
    if key not in fb.cache:
        masks = fb.masks or {}
        if "hand" not in masks or "face" not in masks:
            fb.cache[key] = None
        else:
            fb.cache[key] = contact_region(masks["hand"].to(fb.pred.device), masks["face"].to(fb.pred.device), radius)
    return fb.cache[key]


class ContactMetric(Metric):
    """``l1_contact`` | ``ssim_contact`` | ``lpips_<net>_contact`` | ``contact_rate`` (see the module docstring)."""

    def __init__(self, kind: str, radius: int = 3, lpips=None, crop: int = 64):
        if kind not in CONTACT_KINDS:
            raise ValueError(f"contact metric kind must be one of {CONTACT_KINDS}, got {kind!r}")
        if kind == "lpips" and lpips is None:
            raise ValueError("lpips_contact needs an LPIPS metric instance")
        self.kind, self.radius, self.lpips, self.crop = kind, int(radius), lpips, int(crop)
        self.standin = bool(getattr(lpips, "standin", False)) if kind == "lpips" else False
        self.needs_target = kind != "rate"
        if kind == "lpips":
            base = lpips.name.replace("_STANDIN", "")
            self.name = f"{base}_contact" + ("_STANDIN" if self.standin else "")
        else:
            self.name = "contact_rate" if kind == "rate" else f"{kind}_contact"

    def frames(self, fb):
        region = frame_contact_region(fb, self.radius)
        if region is None:
            return np.full(len(fb), np.nan)
        if self.kind == "rate":
            return (region.flatten(1).sum(1) > 0).double().cpu().numpy()
        t = _require_target(fb, self.name)
        if self.kind == "l1":
            return masked_l1(fb.pred.double(), t.double(), region).cpu().numpy()
        if self.kind == "ssim":
            return masked_ssim(fb.pred, t, region).double().cpu().numpy()
        return masked_lpips(self.lpips, fb.pred, t, region, self.crop).numpy()
