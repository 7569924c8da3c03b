from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.base import AnimationModule


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU())


class UNet(nn.Module):
    def __init__(self, cin: int, cout: int, base: int, num_down: int):
        super().__init__()
        chans = [base * 2**i for i in range(num_down + 1)]
        self.inp = _block(cin, chans[0])
        self.down = nn.ModuleList(_block(chans[i], chans[i + 1]) for i in range(num_down))
        self.up = nn.ModuleList(_block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(num_down)))
        self.out = nn.Conv2d(chans[0], cout, 1)

    def forward(self, x):
        skips = [self.inp(x)]
        for blk in self.down:
            skips.append(blk(F.avg_pool2d(skips[-1], 2)))
        h = skips.pop()
        for blk in self.up:
            skip = skips.pop()
            h = blk(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.out(h)


class DirectRegression(AnimationModule):
    """``x̂_t = σ(UNet([S, D_t]))``: no motion model at all; it shows what a method's motion modelling buys."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.net = UNet(6, 3, self.cfg.base_channels, self.cfg.num_down)

    def forward(self, source: torch.Tensor, driving_frame: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([source, driving_frame], 1) * 2 - 1))

    def animate(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        B, T = driving.shape[:2]
        src = source[:, None].expand(-1, T, -1, -1, -1).reshape(B * T, *source.shape[1:])
        return self(src, driving.reshape(B * T, *driving.shape[2:])).view_as(driving)

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        target = batch.get("target", batch["driving"])
        pred = self.animate(batch["source"], batch["driving"]).flatten(0, 1)
        target = target.flatten(0, 1)
        terms = {}
        if self.use_loss("l1"):
            terms["loss_l1"] = (pred - target).abs().mean()
        if self.use_loss("pyramid"):
            terms["loss_pyramid"] = sum((F.avg_pool2d(pred, s) - F.avg_pool2d(target, s)).abs().mean() for s in (2, 4)) / 2
        return terms
