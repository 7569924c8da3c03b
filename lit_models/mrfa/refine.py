"""MRFA's coarse-to-fine motion refinement (paper Sec. 3.3, Fig. 2 "motion refinement module").

At generator scale ``s`` (coarse → fine) one refinement step reads the structure correlation volume around the
current flow ``T̃_s``, encodes it with the current estimate (displacement and occlusion logit), adds a context
from the source features warped by ``T̃_s``, and predicts residuals: ``T̃_s ← T̃_s + ΔT``, ``Õ_s ← Õ_s + ΔO``
(logits). The flow starts at the prior ``T̂`` (dense-motion output) and the accumulated residual is carried to the
next, finer scale (bilinearly upsampled; residuals are in normalised units so they keep their meaning).

Mapping of K = ``refine_iters`` onto the S generator scales (``refine_schedule``), returned by
:func:`refine_schedule` as steps per scale, coarsest first:

* K = 0: no step at all — the model is exactly the prior-only model (no correlation volume is even built).
* ``spread`` (default), K ≤ S: the K steps sit at scales ``round(linspace(0, S-1, K))`` — K = 1 is the coarsest
  scale, K = 2 the coarsest and the finest, K = S one step per scale (the official setting, S = 6 at 256²).
* ``coarse``, K ≤ S: the K coarsest scales (scales after the last step reuse the carried, upsampled residual).
* K > S (both): one step per scale plus the K - S extra steps repeated at the coarsest scales first
  (counts ``K // S + (i < K % S)``), like RAFT's iterations at a fixed scale.

Each scale's generator features are warped by the prior motion and, once a refinement has happened at or before
that scale, also by the refined motion; the generator fuses the two (``lit_models.mrfa.generator``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lit_models.common.warp import make_coordinate_grid, resize_map, warp
from lit_models.mrfa.structure import CorrelationVolume, StructureEncoder


def refine_schedule(num_iters: int, num_scales: int, mode: str = "spread") -> list[int]:
    """Refinement steps per generator scale, coarsest first (see the module docstring)."""
    if num_iters < 0:
        raise ValueError(f"refine_iters must be >= 0, got {num_iters}")
    if mode not in ("spread", "coarse"):
        raise ValueError(f"unknown refine_schedule {mode!r} (spread | coarse)")
    counts = [0] * num_scales
    if num_iters == 0:
        return counts
    if num_iters > num_scales:
        return [num_iters // num_scales + (i < num_iters % num_scales) for i in range(num_scales)]
    if mode == "coarse" or num_iters == 1:
        idx = range(num_iters)
    else:
        idx = np.round(np.linspace(0, num_scales - 1, num_iters)).astype(int)
    for i in idx:
        counts[i] += 1
    return counts


class UpdateBlock(nn.Module):
    """Motion encoder + head: the correlation lookup (encoded by a 1×1 conv at its own, ≤ correlation, resolution
    and upsampled to the scale), the current estimate (displacement, occlusion logit) and the context → residual
    flow (pixels of the current scale) and occlusion logit. Few, light convolutions: on CPU the per-call cost
    dominates at these sizes. The last layer is zero-initialised: an untrained refiner returns the prior exactly."""

    def __init__(self, corr_features: int, channels: int, context_channels: int):
        super().__init__()
        c = channels
        self.convc = nn.Conv2d(corr_features, c, 1)
        self.convf = nn.Conv2d(3, c, 3, padding=1)
        self.head1 = nn.Conv2d(2 * c + context_channels, c, 3, padding=1)
        self.head2 = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.head2.weight)
        nn.init.zeros_(self.head2.bias)

    def forward(self, corr: torch.Tensor, estimate: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        c = resize_map(F.relu(self.convc(corr)), estimate.shape[-2:])
        f = F.relu(self.convf(estimate))
        return self.head2(F.relu(self.head1(torch.cat([c, f, context], 1))))


class MotionRefiner(nn.Module):
    """Structure correlation volume + shared update block + one context projection per generator scale."""

    def __init__(self, num_points: int, num_channels: int, resolution: int, scale_channels: list[int], *,
                 corr_scale: float, corr_dim: int, corr_levels: int, corr_radius: int, struct_kp_variance: float,
                 struct_block_expansion: int, struct_num_blocks: int, struct_max_features: int,
                 refine_channels: int, context_channels: int, norm: str):
        super().__init__()
        corr_res = max(1, round(resolution * corr_scale))
        self.corr_levels, self.corr_radius = corr_levels, corr_radius
        self.structure = StructureEncoder(num_points, num_channels, corr_res, corr_dim, struct_kp_variance,
                                          struct_block_expansion, struct_num_blocks, struct_max_features, norm)
        self.update = UpdateBlock(corr_levels * (2 * corr_radius + 1) ** 2, refine_channels, context_channels)
        self.to_context = nn.ModuleList(nn.Conv2d(c, context_channels, 1) for c in scale_channels)
        self.corr_scale = corr_scale

    def correlation(self, source: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> CorrelationVolume:
        size = (max(1, round(source.shape[-2] * self.corr_scale)), max(1, round(source.shape[-1] * self.corr_scale)))
        f_s, f_d = self.structure(source, kp_source, kp_driving, size)
        return CorrelationVolume.from_features(f_d, f_s, self.corr_levels, self.corr_radius)

    def step(self, scale_index: int, corr: CorrelationVolume, grid: torch.Tensor, occ_logit: torch.Tensor,
             feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One refinement at a scale: returns the residuals (Δgrid B×h×w×2 normalised, Δocc-logit B×1×h×w)."""
        B, h, w, _ = grid.shape
        ident = make_coordinate_grid(h, w, grid.device, grid.dtype)
        disp = (grid - ident).permute(0, 3, 1, 2)
        estimate = torch.cat([disp * 10, occ_logit], 1)
        context = F.relu(self.to_context[scale_index](warp(feature, grid)))
        delta = self.update(corr.lookup(grid, upsample=False), estimate, context)
        px = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=grid.device, dtype=grid.dtype)
        return delta[:, :2].permute(0, 2, 3, 1) * px, delta[:, 2:]
