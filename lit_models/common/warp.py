"""Backward warping with normalised sampling grids (FOMM's ``T_{S<-D}`` as a B×H×W×2 grid in [-1, 1]).

Convention everywhere in ``lit_models.common``: a motion field is an *absolute* sampling grid in normalised
coordinates (x, y) ∈ [-1, 1]², ``align_corners=True`` (−1 and 1 are the centres of the corner pixels), so a grid
can be resized by plain bilinear interpolation and the identity grid stays the identity at every size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def make_coordinate_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Identity grid h×w×2, last dim (x, y) in [-1, 1]."""
    y = torch.linspace(-1, 1, h, device=device, dtype=dtype)
    x = torch.linspace(-1, 1, w, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def warp(x: torch.Tensor, grid: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Backward warp: ``out(p) = x(grid(p))``; grid B×H'×W'×2 sets the output size (resize it first if needed)."""
    if grid.shape[1:3] != x.shape[-2:]:
        grid = resize_grid(grid, x.shape[-2:])
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=True)


def resize_grid(grid: torch.Tensor, size) -> torch.Tensor:
    """Resize a B×H×W×2 sampling grid to ``size`` (bilinear; exact for the identity, see module docstring)."""
    size = tuple(int(s) for s in size)
    if tuple(grid.shape[1:3]) == size:
        return grid
    g = F.interpolate(grid.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=True)
    return g.permute(0, 2, 3, 1)


def resize_map(x: torch.Tensor, size) -> torch.Tensor:
    """Resize a B×C×H×W map (occlusion, logits, features) bilinearly; no-op at equal size."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def downsample_image(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Anti-aliased bilinear downscaling (FOMM's AntiAliasInterpolation2d, via torch's own antialias)."""
    if scale == 1:
        return x
    size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
