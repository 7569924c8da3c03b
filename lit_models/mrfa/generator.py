"""MRFA's occlusion-aware generator (paper Fig. 2, right; encoder–decoder as in TPSMM).

The encoder gives source features ``e_s`` at S = ``num_down_blocks`` + 1 scales. At every scale the decoder
receives the features warped by the prior motion, ``Ô_s ⊙ W(e_s, T̂_s)``; at scales where the motion has been
refined it also receives ``Õ_s ⊙ W(e_s, T̃_s)`` and fuses both with a 1×1 convolution (initialised to pass the
refined branch). With no refinement (K = 0) the fusion is never called: the generator is the prior-only one.
"""
from __future__ import annotations

import torch
from torch import nn

from lit_models.common.hourglass import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d
from lit_models.common.warp import warp


class Generator(nn.Module):
    def __init__(self, num_channels: int = 3, block_expansion: int = 64, max_features: int = 512,
                 num_down_blocks: int = 5, num_bottleneck_blocks: int = 2, norm: str = "batch",
                 use_refined: bool = True):
        super().__init__()
        D = num_down_blocks
        self.channels = [min(max_features, block_expansion * 2 ** i) for i in range(D + 1)]   # fine → coarse
        ch = self.channels
        self.first = SameBlock2d(num_channels, ch[0], 7, norm)
        self.down = nn.ModuleList(DownBlock2d(ch[i], ch[i + 1], norm) for i in range(D))
        self.bottleneck = nn.Sequential(*[ResBlock2d(ch[D], norm) for _ in range(num_bottleneck_blocks)])
        self.up = nn.ModuleList(UpBlock2d(ch[D] if i == D - 1 else 2 * ch[i + 1], ch[i], norm)
                                for i in reversed(range(D)))
        self.final = nn.Conv2d(2 * ch[0], num_channels, 7, padding=3)
        # only built when refinement is on: a K = 0 model holds exactly the prior-only parameters
        self.fuse = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in ch) if use_refined else None
        for f, c in zip(self.fuse or [], ch):
            with torch.no_grad():
                f.weight.zero_()
                f.weight[:, c:, 0, 0].copy_(torch.eye(c))
                f.bias.zero_()

    @property
    def num_scales(self) -> int:
        return len(self.channels)

    @property
    def scale_channels(self) -> list[int]:
        """Feature channels per scale, coarsest first (the refiner's scale order)."""
        return self.channels[::-1]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Source features, finest first: [e_0 (H×W), e_1 (H/2), …, e_D (H/2^D)]."""
        feats = [self.first(x)]
        for blk in self.down:
            feats.append(blk(feats[-1]))
        return feats

    def warp_scale(self, level: int, feature: torch.Tensor, prior: tuple, refined: tuple | None = None) -> torch.Tensor:
        """``Ô ⊙ W(e, T̂)`` fused with ``Õ ⊙ W(e, T̃)`` when a refined motion exists. prior/refined: (grid, occ)."""
        out = warp(feature, prior[0]) * prior[1]
        if refined is not None:
            out = self.fuse[level](torch.cat([out, warp(feature, refined[0]) * refined[1]], 1))
        return out

    def decode(self, warped: list[torch.Tensor]) -> torch.Tensor:
        """warped: per-scale warped features, finest first (as ``encode``). Returns the image in [0, 1]."""
        h = self.bottleneck(warped[-1])
        for blk, skip in zip(self.up, reversed(warped[:-1])):
            h = torch.cat([blk(h, size=skip.shape[-2:]), skip], 1)
        return torch.sigmoid(self.final(h))
