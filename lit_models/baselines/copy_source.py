from __future__ import annotations

import torch

from lit_models.base import AnimationModule


class CopySource(AnimationModule):
    """Copy-source baseline: ``x̂_t = S`` for every driving frame ``D_t`` (needs no training)."""

    def animate(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        return source[:, None].expand(-1, driving.shape[1], -1, -1, -1).clone()

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        raise RuntimeError("copy_source has no parameters and is not trained; evaluate it directly")
