"""FOMM's convolutional building blocks and the Hourglass (U-Net) used by the keypoint detectors, the dense-motion
network, MRFA's structure encoders and its occlusion-aware generator (Siarohin et al., First Order Motion Model,
NeurIPS 2019, Sec. 3 / App. A; official ``modules/util.py``).

Parameter names are the official ones (``conv`` / ``norm`` / ``pool``, ``conv1`` / ``norm1`` …,
``encoder.down_blocks`` / ``decoder.up_blocks``), so an official FOMM / MRFA state dict loads key for key.
Checkpoints whose blocks were stored positionally (``nn.Sequential`` indices ``0.`` / ``1.``, ``n1`` / ``c1``,
``down`` / ``up``) are renamed on load (``_PositionalKeys``).

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


class _PositionalKeys(nn.Module):
    """Loads state dicts that name this block's parameters positionally: ``_positional_keys`` maps each such key
    prefix (below this module's prefix) to the official name it is renamed to before loading."""

    _positional_keys: dict[str, str] = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self._positional_keys.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                renamed = prefix + new + key[len(prefix + old):]
                if renamed not in state_dict:
                    state_dict[renamed] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SameBlock2d(_PositionalKeys):
    """conv k×k → norm → ReLU at constant resolution."""

    _positional_keys = {"0.": "conv.", "1.": "norm."}

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, norm: str = "batch"):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=kernel_size // 2)
        self.norm = make_norm(norm, out_features)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(_PositionalKeys):
    """conv 3×3 → norm → ReLU → 2× average pooling."""

    _positional_keys = {"0.": "conv.", "1.": "norm."}

    def __init__(self, in_features: int, out_features: int, norm: str = "batch"):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = make_norm(norm, out_features)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x):
        return self.pool(F.relu(self.norm(self.conv(x))))


class UpBlock2d(nn.Module):
    """2× nearest upsampling (or to ``size``) → conv 3×3 → norm → ReLU."""

    def __init__(self, in_features: int, out_features: int, norm: str = "batch"):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = make_norm(norm, out_features)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        x = F.interpolate(x, size=size, scale_factor=None if size else 2, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(_PositionalKeys):
    """Pre-activation residual block: ``x + conv2(relu(norm2(conv1(relu(norm1(x))))))``."""

    _positional_keys = {"n1.": "norm1.", "c1.": "conv1.", "n2.": "norm2.", "c2.": "conv2."}

    def __init__(self, features: int, norm: str = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.norm1 = make_norm(norm, features)
        self.norm2 = make_norm(norm, features)

    def forward(self, x):
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class _Encoder(nn.Module):
    def __init__(self, block_expansion, in_features, num_blocks, max_features, norm="batch"):
        super().__init__()
        ch = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.down_blocks = nn.ModuleList(DownBlock2d(in_features if i == 0 else ch(i), ch(i + 1), norm)
                                         for i in range(num_blocks))

    def forward(self, x):
        outs = [x]
        for blk in self.down_blocks:
            outs.append(blk(outs[-1]))
        return outs


class _Decoder(nn.Module):
    def __init__(self, block_expansion, in_features, num_blocks, max_features, norm="batch"):
        super().__init__()
        ch = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.up_blocks = nn.ModuleList(UpBlock2d((1 if i == num_blocks - 1 else 2) * ch(i + 1), ch(i), norm)
                                       for i in reversed(range(num_blocks)))
        self.out_filters = block_expansion + in_features

    def forward(self, xs):
        xs = list(xs)
        out = xs.pop()
        for blk in self.up_blocks:
            skip = xs.pop()
            out = torch.cat([blk(out, size=skip.shape[-2:]), skip], dim=1)
        return out


class Hourglass(_PositionalKeys):
    """U-Net: ``num_blocks`` down blocks (channels ``min(max_features, block_expansion·2^(i+1))``), then as many up
    blocks with skip concatenation (each up-sampled to its skip's size, so odd sizes work); output channels
    ``out_filters = block_expansion + in_features``."""

    _positional_keys = {"down.": "encoder.down_blocks.", "up.": "decoder.up_blocks."}

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256,
                 norm: str = "batch"):
        super().__init__()
        self.encoder = _Encoder(block_expansion, in_features, num_blocks, max_features, norm)
        self.decoder = _Decoder(block_expansion, in_features, num_blocks, max_features, norm)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))
