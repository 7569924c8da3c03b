"""Backward warping with normalised sampling grids (FOMM's ``T_{S<-D}`` as a B×H×W×2 grid in [-1, 1]), and the
two down-samplers of the FOMM family.

A motion field is an *absolute* sampling grid in normalised coordinates (x, y) ∈ [-1, 1]². Two conventions are
in use, and each is kept because numbers (official goldens, trained checkpoints) depend on it:

* ``align_corners=True`` (``warp``, ``resize_grid``, the TPS prior): −1 and 1 are the centres of the corner
  pixels, so a grid can be resized by plain bilinear interpolation and the identity grid stays the identity at
  every size; identity grids from ``torch.linspace``; down-sampling by ``downsample_image`` (torch's antialias).
* the official FOMM / MRFA code as it runs on torch ≥ 1.3: ``grid_sample`` with its default
  ``align_corners=False``; identity grids with FOMM's arithmetic ``2·(i/(n-1)) - 1`` (``fomm_arithmetic=True``,
  within 1 ulp of ``linspace`` but not bit-equal); down-sampling by ``AntiAliasInterpolation2d`` (Gaussian blur,
  then nearest).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(h: int, w: int, device=None, dtype=torch.float32, *,
                         fomm_arithmetic: bool = False) -> torch.Tensor:
    """Identity grid h×w×2, last dim (x, y) in [-1, 1]: ``torch.linspace``, or with ``fomm_arithmetic`` the
    official FOMM ``make_coordinate_grid``'s ``2·(i/(n-1)) - 1`` (see the module docstring)."""
    if fomm_arithmetic:
        x = 2 * (torch.arange(w, device=device, dtype=dtype) / (w - 1)) - 1
        y = 2 * (torch.arange(h, device=device, dtype=dtype) / (h - 1)) - 1
        return torch.stack([x.view(1, -1).expand(h, w), y.view(-1, 1).expand(h, w)], dim=-1)
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


class AntiAliasInterpolation2d(nn.Module):
    """Official FOMM band-limited down-sampling: Gaussian blur with σ = (1/scale - 1)/2, then nearest resampling by
    ``scale`` (buffer ``weight``, as in official checkpoints)."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        ks = 2 * round(sigma * 4) + 1
        self.ka = ks // 2
        self.kb = self.ka - 1 if ks % 2 == 0 else self.ka
        grids = torch.meshgrid(torch.arange(ks, dtype=torch.float32), torch.arange(ks, dtype=torch.float32),
                               indexing="ij")
        kernel = 1
        for g in grids:
            kernel = kernel * torch.exp(-(g - (ks - 1) / 2) ** 2 / (2 * sigma ** 2))
        kernel = kernel / torch.sum(kernel)
        self.register_buffer("weight", kernel.view(1, 1, ks, ks).repeat(channels, 1, 1, 1))
        self.groups, self.scale = channels, scale

    def forward(self, x):
        if self.scale == 1.0:
            return x
        padded, weight = F.pad(x, (self.ka, self.kb, self.ka, self.kb)), self.weight.to(x.dtype)
        inv = round(1 / self.scale)
        if 1 / self.scale == inv:
            # nearest resampling by 1/inv keeps the blurred pixels 0, inv, 2·inv, … (F.interpolate's source index
            # floor(i·inv)): compute only those, a stride-inv convolution — the same sums, 1/inv² of the work
            out = F.conv2d(padded, weight=weight, stride=inv, groups=self.groups)
            return out[:, :, :int(x.shape[2] * self.scale), :int(x.shape[3] * self.scale)]
        out = F.conv2d(padded, weight=weight, groups=self.groups)
        return F.interpolate(out, scale_factor=(self.scale, self.scale))
