"""Training augmentation of the official FOMM / MRFA data pipeline (``augmentation.AllAugmentationTransform`` with
``flip_param`` {time_flip, horizontal_flip} and ``jitter_param`` {brightness, contrast, saturation, hue}), applied
identically to every frame of a sample.

The official transform, per sample (a clip = [source, driving] frames):

1. ``RandomFlip``: ``u₁ = random()``; when ``u₁ < 0.5`` and time_flip, the clip is reversed and nothing else of
   the flip step happens; else ``u₂ = random()`` and when ``u₂ < 0.5`` and horizontal_flip every frame is mirrored
   (so a sample is never both time- and mirror-flipped);
2. ``ColorJitter``: factors b ~ U[max(0, 1-β), 1+β], c ~ U[…γ], s ~ U[…σ], h ~ U[-η, η] (drawn in that order);
   the adjustments [brightness, saturation, hue, contrast] are shuffled; each frame goes
   ``img_as_ubyte → PIL → adjustments in that order → np.array`` with torchvision's PIL functions
   (``adjust_brightness`` …) — done here with the same functions on the uint8 frames, so the numbers are equal.

``draw`` takes those draws from a numpy Generator (the lab's per-sample streams) or from Python's ``random`` exactly
as the official code does (same values for the same ``random`` state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

JITTER_ORDER = ("brightness", "saturation", "hue", "contrast")   # the official list before random.shuffle


@dataclass
class AugmentParams:
    """One sample's draw."""

    time_flip: bool = False
    horizontal_flip: bool = False
    factors: dict = field(default_factory=dict)      # name → factor (only the jitters that are on)
    order: tuple = ()                                # the jitters in the order they are applied

    def to_dict(self) -> dict:
        return {"time_flip": self.time_flip, "horizontal_flip": self.horizontal_flip,
                "factors": dict(self.factors), "order": list(self.order)}


def _cfg_value(cfg: Any, name: str, default=0.0):
    return getattr(cfg, name, default) if not isinstance(cfg, dict) else cfg.get(name, default)


def _ranges(cfg) -> dict:
    """name → (low, high) of the jitters that are on (official ColorJitter.get_params)."""
    out = {}
    for name in ("brightness", "contrast", "saturation"):
        v = float(_cfg_value(cfg, name))
        if v > 0:
            out[name] = (max(0.0, 1 - v), 1 + v)
    hue = float(_cfg_value(cfg, "hue"))
    if hue > 0:
        if hue > 0.5:
            raise ValueError(f"data.augmentation.hue={hue} must be <= 0.5")
        out["hue"] = (-hue, hue)
    return out


def draw(rng, cfg) -> AugmentParams:
    """A sample's draw, in the official order (RandomFlip, then ColorJitter's factors and its shuffled order), from a
    numpy Generator (the lab's per-sample streams) or a ``random.Random`` / the ``random`` module (the official
    code's own draws, for tests against it)."""
    p = AugmentParams()
    if rng.random() < 0.5 and bool(_cfg_value(cfg, "time_flip", False)):
        p.time_flip = True
    elif rng.random() < 0.5 and bool(_cfg_value(cfg, "horizontal_flip", False)):
        p.horizontal_flip = True
    ranges = _ranges(cfg)
    for name in ("brightness", "contrast", "saturation", "hue"):
        if name in ranges:
            lo, hi = ranges[name]
            p.factors[name] = float(lo + (hi - lo) * rng.random())     # = random.uniform(lo, hi)
    names = [n for n in JITTER_ORDER if n in p.factors]
    if isinstance(rng, np.random.Generator):
        p.order = tuple(names[i] for i in rng.permutation(len(names)))
    else:
        rng.shuffle(names)                                          # official: random.shuffle of the transforms
        p.order = tuple(names)
    return p


def jitter_frame(frame: np.ndarray, params: AugmentParams) -> np.ndarray:
    """H×W×3 uint8 → H×W×3 uint8 through torchvision's PIL adjustments in ``params.order``."""
    if not params.order:
        return frame
    import torchvision.transforms.functional as TF
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame))
    for name in params.order:
        img = getattr(TF, f"adjust_{name}")(img, params.factors[name])
    return np.asarray(img)


def apply_frames(frames: np.ndarray, params: AugmentParams) -> np.ndarray:
    """N×H×W×3 uint8 frames of one sample (source first) → augmented, same layout."""
    out = frames[::-1] if params.time_flip else frames
    if params.horizontal_flip:
        out = out[:, :, ::-1]
    if params.order:
        out = np.stack([jitter_frame(f, params) for f in out])
    return np.ascontiguousarray(out)


def apply_masks(masks: np.ndarray, params: AugmentParams) -> np.ndarray:
    """N×H×W masks: the same reordering and mirroring as the frames (no colour jitter)."""
    out = masks[::-1] if params.time_flip else masks
    if params.horizontal_flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def apply_points(points: np.ndarray, params: AugmentParams, width: int) -> np.ndarray:
    """N×K×2 pixel (x, y), pixel centres at integers: reordered, and x → width - 1 - x when mirrored."""
    out = points[::-1] if params.time_flip else points
    if params.horizontal_flip:
        out = out.copy()
        out[..., 0] = (width - 1) - out[..., 0]
    return np.ascontiguousarray(out)


def is_active(cfg: Optional[Any]) -> bool:
    return cfg is not None and (bool(_cfg_value(cfg, "time_flip", False)) or
                                bool(_cfg_value(cfg, "horizontal_flip", False)) or bool(_ranges(cfg)))
