"""MRFA's structure correlation volume (paper Sec. 3.2, "non-prior-based motion").

Keypoint-structure features ``F_S = E_S([H(p^S) + P, ↓S])`` and ``F_D = E_D(H(p^D) + P)`` (Gaussian heatmaps ``H``
of the prior's keypoints, learnable positional embedding ``P``, the downscaled source ``↓S`` for the source branch),
each projected to ``corr_dim``; the all-pairs correlation ``C(x, y) = <F_D(x), F_S(y)> / sqrt(d)`` at the
correlation resolution; a pyramid over the source dims (average pooling) and a RAFT-style lookup of a
(2r+1)² window around the current flow, per level, with ``grid_sample``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.common.hourglass import Hourglass
from lit_models.common.keypoints import kp2gaussian
from lit_models.common.warp import downsample_image, resize_grid, resize_map


class StructureEncoder(nn.Module):
    """Source and driving structure encoders (Hourglass + 1×1 projection to ``corr_dim``)."""

    def __init__(self, num_points: int, num_channels: int, corr_res: int, corr_dim: int, kp_variance: float,
                 block_expansion: int, num_blocks: int, max_features: int, norm: str):
        super().__init__()
        self.corr_res, self.kp_variance = corr_res, kp_variance
        self.pos_embedding = nn.Parameter(torch.randn(1, num_points, corr_res, corr_res) * 0.02)
        self.source_enc = Hourglass(block_expansion, num_points + num_channels, num_blocks, max_features, norm)
        self.driving_enc = Hourglass(block_expansion, num_points, num_blocks, max_features, norm)
        self.source_head = nn.Conv2d(self.source_enc.out_filters, corr_dim, 1)
        self.driving_head = nn.Conv2d(self.driving_enc.out_filters, corr_dim, 1)

    def forward(self, source: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor, size=None):
        size = size or (self.corr_res, self.corr_res)
        pos = resize_map(self.pos_embedding, size)
        hs = kp2gaussian(kp_source, size, self.kp_variance) + pos
        hd = kp2gaussian(kp_driving, size, self.kp_variance) + pos
        src = F.interpolate(source, size=size, mode="bilinear", align_corners=False, antialias=True)
        f_s = self.source_head(self.source_enc(torch.cat([hs, src], 1)))
        f_d = self.driving_head(self.driving_enc(hd))
        return f_s, f_d


class CorrelationVolume:
    """All-pairs correlation B×(Hd·Wd)×Hs×Ws with a pyramid over the source dims and a windowed lookup.

    ``lookup(grid)`` takes an absolute sampling grid (normalised source coordinates, B×Hd×Wd×2, align_corners
    convention of ``lit_models.common.warp``) and returns B×(levels·(2r+1)²)×Hd×Wd. ``at_size(h, w)`` gives the
    volume for another driving resolution: coarser by average pooling over the driving dims (exact: pooling the
    correlation equals correlating pooled driving features), finer by looking up at the base resolution and
    upsampling the result (MRFA's official mapping for scales above the base resolution).
    """

    def __init__(self, corr: torch.Tensor, driving_size, num_levels: int = 2, radius: int = 3):
        self.corr, self.driving_size = corr, tuple(driving_size)        # corr: B×(Hd·Wd)×Hs×Ws
        self.num_levels, self.radius = num_levels, radius
        B, N, Hs, Ws = corr.shape
        lvl = corr.reshape(B * N, 1, Hs, Ws)
        self.pyramid = [lvl]
        for _ in range(num_levels - 1):
            if min(lvl.shape[-2:]) < 2:
                break
            lvl = F.avg_pool2d(lvl, 2, stride=2)
            self.pyramid.append(lvl)
        self._pooled: dict = {}

    @classmethod
    def from_features(cls, f_driving: torch.Tensor, f_source: torch.Tensor, num_levels: int = 2, radius: int = 3):
        B, C, Hd, Wd = f_driving.shape
        corr = torch.einsum("bcn,bcm->bnm", f_driving.flatten(2), f_source.flatten(2)) / C ** 0.5
        return cls(corr.view(B, Hd * Wd, *f_source.shape[-2:]), (Hd, Wd), num_levels, radius)

    @property
    def num_features(self) -> int:
        return self.num_levels * (2 * self.radius + 1) ** 2

    def _sample(self, grid: torch.Tensor) -> torch.Tensor:
        B, Hd, Wd, _ = grid.shape
        r = self.radius
        d = torch.arange(-r, r + 1, device=grid.device, dtype=grid.dtype)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        out = []
        for lvl in self.pyramid:
            Hl, Wl = lvl.shape[-2:]
            # pixel offsets of this level in normalised units (align_corners=True: 2 / (size - 1) per pixel)
            off = torch.stack([dx * 2 / max(Wl - 1, 1), dy * 2 / max(Hl - 1, 1)], -1)      # (2r+1)×(2r+1)×2
            pos = grid.reshape(B * Hd * Wd, 1, 1, 2) + off[None]
            out.append(F.grid_sample(lvl, pos, align_corners=True, padding_mode="zeros").view(B, Hd, Wd, -1))
        feats = torch.cat(out, -1)
        if feats.shape[-1] < self.num_features:  # pyramid cut short by a tiny source size: pad the missing levels
            feats = F.pad(feats, (0, self.num_features - feats.shape[-1]))
        return feats.permute(0, 3, 1, 2).contiguous()

    def pooled(self, factor: int) -> "CorrelationVolume":
        """Volume for a driving grid ``factor``× coarser (average pooling over the driving dims)."""
        if factor not in self._pooled:
            B, N, Hs, Ws = self.corr.shape
            Hd, Wd = self.driving_size
            c = self.corr.view(B, Hd, Wd, Hs * Ws).permute(0, 3, 1, 2)
            c = F.avg_pool2d(c, factor, stride=factor)
            h, w = c.shape[-2:]
            c = c.permute(0, 2, 3, 1).reshape(B, h * w, Hs, Ws)
            self._pooled[factor] = CorrelationVolume(c, (h, w), self.num_levels, self.radius)
        return self._pooled[factor]

    def lookup(self, grid: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        """Windowed lookup around ``grid``; for grids finer than the base resolution the features are computed
        at the base resolution and upsampled to the grid's size (``upsample=False`` returns them at the base
        resolution, for callers that encode them before upsampling)."""
        h, w = grid.shape[1:3]
        Hd, Wd = self.driving_size
        if (h, w) == (Hd, Wd):
            return self._sample(grid)
        if h < Hd:
            factor = Hd // h
            if Hd % h == 0 and Wd // w == factor and Wd % w == 0:
                return self.pooled(factor)._sample(grid)
        # finer (or non-integer ratio): look up at the base resolution, then resize the features
        feats = self._sample(resize_grid(grid, (Hd, Wd)))
        return resize_map(feats, (h, w)) if upsample else feats
