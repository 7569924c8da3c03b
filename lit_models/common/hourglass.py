"""FOMM's convolutional building blocks and the Hourglass (U-Net) used by the keypoint detector, the dense-motion
network and MRFA's structure encoders (Siarohin et al., First Order Motion Model, NeurIPS 2019, Sec. 3 / App. A).

``norm`` picks the normalisation: ``batch`` (the papers' choice), ``group`` or ``instance`` (batch-size
independent, better for tiny CPU batches) or ``none``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        groups = min(8, channels)
        return nn.GroupNorm(groups if channels % groups == 0 else math.gcd(8, channels), channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r} (batch | group | instance | none)")


def replace_batchnorm(module: nn.Module, norm: str) -> int:
    """Swap every ``BatchNorm2d`` below ``module`` for ``make_norm(norm, channels)`` (in place); returns how many.
    For networks whose official blocks hard-code BatchNorm: a per-sample norm computes the same function on a
    split batch (DDP on CPU, where torch has no SyncBatchNorm)."""
    n = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, make_norm(norm, child.num_features))
            n += 1
        else:
            n += replace_batchnorm(child, norm)
    return n


class SameBlock2d(nn.Sequential):
    """conv k×k → norm → ReLU at constant resolution."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, norm: str = "batch"):
        super().__init__(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2), make_norm(norm, cout), nn.ReLU())


class DownBlock2d(nn.Sequential):
    """conv 3×3 → norm → ReLU → 2× average pooling."""

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), make_norm(norm, cout), nn.ReLU(), nn.AvgPool2d(2))


class UpBlock2d(nn.Module):
    """2× nearest upsampling → conv 3×3 → norm → ReLU."""

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = make_norm(norm, cout)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        x = F.interpolate(x, size=size, scale_factor=None if size else 2, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(nn.Module):
    """Pre-activation residual block (norm → ReLU → conv) × 2."""

    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        self.n1, self.c1 = make_norm(norm, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.n2, self.c2 = make_norm(norm, channels), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.relu(self.n2(self.c1(F.relu(self.n1(x))))))


class Hourglass(nn.Module):
    """U-Net: ``num_blocks`` down blocks (channels ``min(max_features, block_expansion·2^(i+1))``), then as many up
    blocks with skip concatenation; output has ``out_filters`` = block_expansion + in_features channels."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256,
                 norm: str = "batch"):
        super().__init__()
        ch = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.down = nn.ModuleList(
            DownBlock2d(in_features if i == 0 else ch(i), ch(i + 1), norm) for i in range(num_blocks))
        self.up = nn.ModuleList()
        for i in reversed(range(num_blocks)):
            cin = (1 if i == num_blocks - 1 else 2) * ch(i + 1)
            self.up.append(UpBlock2d(cin, ch(i), norm))
        self.out_filters = block_expansion + in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for blk in self.down:
            skips.append(blk(skips[-1]))
        out = skips.pop()
        for blk in self.up:
            skip = skips.pop()
            out = torch.cat([blk(out, size=skip.shape[-2:]), skip], dim=1)
        return out
