"""MRFA's own building blocks — RAFT-style pixel grids and sampling, activation checkpointing and the
occlusion-aware generator — laid out as in the official code (JialeTao/MRFA, itself built on FOMM, Siarohin et
al. NeurIPS 2019) so that an official state dict loads key for key (``lit_models.mrfa.import_official``).

The FOMM blocks (``SameBlock2d`` … ``Hourglass``, ``AntiAliasInterpolation2d``, ``kp2gaussian``, the dense-motion
network) are the shared ones of ``lit_models.common``, used here with the official code's conventions, which
matter for numerical parity: ``fomm_arithmetic`` identity grids, ``grid_sample``'s default
``align_corners=False`` in the dense-motion network, Gaussian-then-nearest down-sampling, nearest ×2
up-sampling and BatchNorm everywhere (``lit_models.common.warp`` documents both conventions).
"""
from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from lit_models.common.dense_motion import DenseMotionNetwork
from lit_models.common.hourglass import DownBlock2d, Hourglass, ResBlock2d, SameBlock2d, UpBlock2d
from lit_models.common.warp import AntiAliasInterpolation2d

__all__ = ["AntiAliasInterpolation2d", "ChannelBlock2d", "DenseMotionNetwork", "DownBlock2d", "Hourglass",
           "OcclusionAwareGenerator", "ResBlock2d", "SameBlock2d", "UpBlock2d", "bilinear_sampler", "checkpointed",
           "coords_grid"]


# ---- pixel coordinates (RAFT) ----------------------------------------------------------------------------------
def coords_grid(batch: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel identity grid B×2×h×w, channel 0 = x (RAFT's ``coords_grid``)."""
    y, x = torch.meshgrid(torch.arange(h, device=like.device), torch.arange(w, device=like.device), indexing="ij")
    return torch.stack([x, y], 0).to(like.dtype)[None].expand(batch, -1, -1, -1)


def bilinear_sampler(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` at pixel coordinates ``coords`` (…×2, x first; align_corners=True)."""
    H, W = img.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    grid = torch.cat([2 * x / (W - 1) - 1, 2 * y / (H - 1) - 1], dim=-1)
    return F.grid_sample(img, grid, align_corners=True)


# ---- activation checkpointing ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _scratch_batchnorm_stats(module: nn.Module | None):
    """While recomputing in backward, BatchNorm layers of ``module`` update copies of their running statistics
    (thrown away on exit): the batch is not counted twice, and the real buffers are never written (their
    versions, which autograd checks, stay as they are). Train-mode output uses batch statistics only, so the
    recomputation is identical to the first pass."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if module is not None else []
    names = ("running_mean", "running_var", "num_batches_tracked")
    real = [[getattr(m, n) for n in names] for m in bns]
    for m, bufs in zip(bns, real):
        for n, b in zip(names, bufs):
            if b is not None:
                setattr(m, n, b.clone())
    try:
        yield
    finally:
        for m, bufs in zip(bns, real):
            for n, b in zip(names, bufs):
                setattr(m, n, b)


def checkpointed(fn, module: nn.Module | None, *args):
    """``fn(*args)`` under ``torch.utils.checkpoint`` (non-reentrant): its activations are recomputed in backward
    instead of stored. Exact for deterministic code; ``module``: the one holding the BatchNorm layers ``fn`` runs
    (None if none), whose statistics the recomputation must not update."""
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False,
                                             context_fn=lambda: (contextlib.nullcontext(),
                                                                 _scratch_batchnorm_stats(module)))


# ---- generator -----------------------------------------------------------------------------------------------------
class ChannelBlock2d(nn.Module):
    """norm → ReLU → conv halving the channels (fuses [refined-warp, prior-warp] features in the generator)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features // 2, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(in_features, affine=True)

    def forward(self, x):
        return self.conv1(F.relu(self.norm1(x)))


class OcclusionAwareGenerator(nn.Module):
    """Encoder features ``e_s`` at S = num_up_blocks + 1 scales; the decoder blends, per scale, the source features
    warped by the refined motion ``Õ_s ⊙ W(e_s, T̃_s) + (1 - Õ_s) ⊙ h_s`` and concatenates the prior-warped ones
    ``W(e_s, T̂_s)`` (fused by a ``ChannelBlock2d``); the output is ``D̂ = (1 - Õ)·σ(final(h)) + Õ·W(S, T)``."""

    def __init__(self, num_channels: int = 3, block_expansion: int = 64, max_features: int = 512,
                 num_up_blocks: int = 5):
        super().__init__()
        self.num_up_blocks = num_up_blocks
        self.first = SameBlock2d(num_channels, block_expansion, 7)
        ch = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.down_blocks = nn.ModuleList(DownBlock2d(ch(i), ch(i + 1)) for i in range(num_up_blocks))
        self.up_blocks = nn.ModuleList(UpBlock2d(ch(i + 1), ch(i)) for i in reversed(range(num_up_blocks)))
        self.resblock = nn.ModuleList(ResBlock2d(ch(i + 1)) for i in reversed(range(num_up_blocks)))
        self.channel_block = nn.ModuleList(ChannelBlock2d(2 * ch(i + 1)) for i in reversed(range(num_up_blocks)))
        self.final = nn.Conv2d(block_expansion, num_channels, 7, padding=3)
        self.channels = [ch(i) for i in reversed(range(num_up_blocks + 1))]       # coarse → fine

    def encode(self, x):
        """Source features, coarsest first (official order)."""
        f = [self.first(x)]
        for blk in self.down_blocks:
            f.append(blk(f[-1]))
        return f[::-1]

    def decode(self, warp_f, warp_img, occlusion, warp_f_c=None):
        out = warp_f[0] * occlusion[0]
        if warp_f_c is not None:
            out = torch.cat([out, warp_f_c[0]], dim=1)
        for i in range(self.num_up_blocks):
            if warp_f_c is not None:
                out = self.channel_block[i](out)
            out = self.up_blocks[i](self.resblock[i](out))
            out = warp_f[i + 1] * occlusion[i + 1] + out * (1 - occlusion[i + 1])
            if warp_f_c is not None and i != self.num_up_blocks - 1:
                out = torch.cat([out, warp_f_c[i + 1]], dim=1)
        out = torch.sigmoid(self.final(out))
        return out * (1 - occlusion[-1]) + warp_img * occlusion[-1]
