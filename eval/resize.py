"""Resolutions of an evaluation: the protocol's ``resize`` between native frames and the protocol's resolution, and
the model run at its own resolution.

Frames arrive at native size; ``resize_frames`` takes them once to the protocol's ``resolution`` with the
protocol's ``resize`` method. ``animate_at_model_resolution`` resizes the native frames straight to the model's
resolution (never through a smaller protocol resolution), animates the whole clip in one call and resizes the output
back to the protocol's resolution, where every metric is computed. Landmark-centred local control (X-Portrait's
eye / mouth patches) gets the landmarks ``experiments.animate`` gives it.
"""
from __future__ import annotations

import inspect
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from eval.protocol import Resize
from toolbox.choices import as_choice


RESIZE_METHODS = {Resize.bilinear_antialias: ("bilinear", True), Resize.bilinear: ("bilinear", False),
                  Resize.bicubic_antialias: ("bicubic", True), Resize.bicubic: ("bicubic", False),
                  Resize.area: ("area", False), Resize.nearest: ("nearest", False)}


def resize_frames(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """N×3×h×w → N×3×size×size with the protocol's resize method (no-op when already that size)."""
    if x.shape[-2:] == (size, size):
        return x
    mode, antialias = RESIZE_METHODS[as_choice(Resize, method, "eval_protocol.resize")]
    kw = {"align_corners": False, "antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x.float(), size=(size, size), mode=mode, **kw).clamp(0, 1)


def resize_video(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """…×T×3×h×w (any leading dims) → …×T×3×size×size."""
    lead = x.shape[:-3]
    return resize_frames(x.reshape(-1, *x.shape[-3:]), size, method).reshape(*lead, 3, size, size)


def model_resolution(model) -> Optional[int]:
    """The resolution the model was built / trained at (``model.cfg.resolution``), or None when it has none: a
    parameter-free model (``trainable`` False, e.g. copy-source) learned nothing at any resolution and runs at the
    protocol's."""
    if getattr(model, "trainable", True) is False:
        return None
    res = getattr(getattr(model, "cfg", None), "resolution", None)
    if res is None:
        hp = getattr(model, "hparams", None) or {}
        res = (hp.get("model") or {}).get("resolution") if isinstance(hp, dict) or hasattr(hp, "get") else None
    return None if res is None else int(res)


def animate_at_model_resolution(model, source: torch.Tensor, driving: torch.Tensor, size: int, method: str,
                                model_res: Optional[int], generator: Optional[torch.Generator] = None,
                                precision: str = "fp32", detect=None,
                                cross: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Any checkpoint under any protocol: ``source`` B×3×h×w and ``driving`` B×T×3×h×w (native size) are resized
    with the protocol's ``method`` straight to the model's resolution (never through a smaller protocol resolution)
    and animated — the whole clip in one call, every draw from ``generator``, under ``precision``'s autocast; the
    output is resized to the protocol's ``size``², where every metric is computed against the native frames resized
    to ``size``². Landmark-centred local control gets the patches ``experiments.animate`` gives it: from ``detect``
    (``preprocess=official``: FAN) or dlib's landmarks. ``cross``: a cross-identity protocol — a model's
    ``cross_identity_animate_kwargs()`` (MRFA's official relative motion) are passed too.
    Returns (source, driving, prediction) at the protocol's resolution."""
    from lit_models.base import animate_kwargs, precision_context

    src_p, drv_p = resize_frames(source, size, method), resize_video(driving, size, method)
    r = model_res or size
    src_m, drv_m = resize_frames(source, r, method), resize_video(driving, r, method)
    where = {"patch_centres": official_patch_centres(detect, drv_m)} if detect is not None and uses_landmarks(model) \
        else {"keypoints": local_control_landmarks(model, drv_m)}
    if cross and hasattr(model, "cross_identity_animate_kwargs"):   # e.g. MRFA's official relative motion
        where.update(model.cross_identity_animate_kwargs())
    with precision_context(precision, drv_m.device):
        pred = model.animate(src_m, drv_m, **animate_kwargs(model, generator=generator, **where))
    pred = pred.float()
    if pred.shape != drv_m.shape:
        raise RuntimeError(f"animate returned {tuple(pred.shape)} for driving {tuple(drv_m.shape)}")
    return src_p, drv_p, resize_video(pred, size, method)


def uses_landmarks(model) -> bool:
    """A model with landmark-centred local control (X-Portrait's eye / mouth patches)."""
    return bool(getattr(getattr(model, "cfg", None), "use_local_control", False)) \
        and "keypoints" in inspect.signature(model.animate).parameters


def local_control_landmarks(model, driving: torch.Tensor) -> Optional[torch.Tensor]:
    """The landmarks ``experiments.animate`` (``preprocess=none``) gives a model with landmark-centred local
    control (``datamodules.preprocess.xportrait.dlib_landmarks`` of each driving frame), B×T×68×2 pixels of
    ``driving`` (B×T×3×H×W); None for other models or when no frame has a face."""
    if not uses_landmarks(model):
        return None
    from datamodules.preprocess.xportrait import dlib_landmarks

    out = []
    for clip in driving:
        frames = (clip.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        lm = dlib_landmarks(frames)
        if lm is None:
            return None
        out.append(torch.from_numpy(lm))
    return torch.stack(out).to(driving.device)


def official_patch_centres(detect, driving: torch.Tensor) -> torch.Tensor:
    """``preprocess=official``: X-Portrait's patch centres as ``experiments.animate`` computes them
    (``datamodules.preprocess.xportrait.patch_centres``: FAN on the frame resized to 256², official rounding and
    clipping), B×T×3×2 pixels of ``driving`` (NaN: no face, no patches)."""
    from datamodules.preprocess.xportrait import patch_centres

    out = torch.full((*driving.shape[:2], 3, 2), float("nan"))
    for b, clip in enumerate(driving):
        for t, frame in enumerate(clip.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()):
            c = patch_centres(frame, detect, target_res=frame.shape[1])
            if c is not None:
                out[b, t] = torch.from_numpy(c.astype(np.float32))
    return out.to(driving.device)


def scale_points(kp: torch.Tensor, h: int, w: int, size: int) -> torch.Tensor:
    """Pixel (x, y) at h×w → pixels at size×size; pixel centres at integers: (x + 0.5)·s − 0.5."""
    scale = torch.tensor([size / w, size / h], dtype=torch.float32)
    return (kp.float() + 0.5) * scale - 0.5
