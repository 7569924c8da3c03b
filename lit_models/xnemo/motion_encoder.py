"""X-NeMo's motion path: ``m = E_m(D̃)`` (1-D descriptor), ``c = P(reshape(m))`` (cross-attention tokens).

* :class:`MotionEncoder` ``E_m``: strided conv stack → a linear map of the whole final feature map (``pool=flatten``,
  default) or of its spatial mean (``pool=mean``) → ``m``. Either way ``m`` is one vector per frame with no spatial
  layout for the denoiser, so no spatially aligned control can reach it. ``flatten`` is the default because a
  global average pool makes the descriptor (nearly) invariant to where the face is — head translation and most of
  yaw/scale, i.e. much of the motion — which a mean-pooled encoder can only recover from border effects.
* :class:`MotionTokenizer` ``P``: ``m`` ∈ R^d is reshaped to ``d / d_tok`` tokens of ``d_tok`` numbers, each
  projected to the U-Net's ``cross_attention_dim`` with a learned position embedding; a learned null sequence
  replaces them when the motion condition is dropped (classifier-free guidance).
* :func:`temporal_lowpass`: Gaussian smoothing of ``m`` along time (the descriptor low-pass switch).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


POOLS = ("flatten", "mean")


class MotionEncoder(nn.Module):
    def __init__(self, motion_dim: int, channels: list[int], resolution: int, pool: str = "flatten"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"motion_encoder_pool must be one of {POOLS}, got {pool!r}")
        side = resolution
        for _ in channels:
            side = (side + 1) // 2                 # stride-2, padding-1, kernel-3 convs
        layers, cin = [], 3
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = pool
        self.head = nn.Linear(cin * side * side if pool == "flatten" else cin, motion_dim)
        self.resolution = resolution

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "head.weight")
        if w is not None and w.ndim == 2 and w.shape[1] != self.head.in_features:
            other = "mean" if self.pool == "flatten" else "flatten"
            raise ValueError(
                f"{prefix}head.weight takes {w.shape[1]} features, this motion encoder's head {self.head.in_features} "
                f"(motion_encoder_pool={self.pool!r}): the checkpoint was trained with another pool — load it with "
                f"model.motion_encoder_pool={other}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, frames01: torch.Tensor) -> torch.Tensor:
        """N×3×H×W in [0, 1] → N×motion_dim."""
        x = F.interpolate(frames01, size=(self.resolution,) * 2, mode="bilinear", align_corners=False,
                          antialias=self.resolution < frames01.shape[-1]) if frames01.shape[-1] != self.resolution else frames01
        h = self.features(x * 2 - 1)
        h = h.flatten(1) if self.pool == "flatten" else h.mean(dim=(2, 3))
        return self.head(h)


class MotionTokenizer(nn.Module):
    def __init__(self, motion_dim: int, token_dim: int, cross_attention_dim: int):
        super().__init__()
        if motion_dim % token_dim:
            raise ValueError(f"motion_dim={motion_dim} must be a multiple of motion_token_dim={token_dim}")
        self.num_tokens = motion_dim // token_dim
        self.token_dim = token_dim
        self.proj = nn.Linear(token_dim, cross_attention_dim)
        self.pos = nn.Parameter(torch.randn(1, self.num_tokens, cross_attention_dim) * 0.02)
        self.null = nn.Parameter(torch.randn(1, self.num_tokens, cross_attention_dim) * 0.02)

    def forward(self, m: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """m N×motion_dim, keep N bool → tokens N×num_tokens×cross_attention_dim (null tokens where not kept)."""
        tokens = self.proj(m.view(m.shape[0], self.num_tokens, self.token_dim)) + self.pos
        return torch.where(keep.view(-1, 1, 1), tokens, self.null.expand_as(tokens))


def temporal_lowpass(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """B×T×d → B×T×d, Gaussian (σ in frames) along T with replicate padding; identity when T = 1 or σ ≤ 0."""
    B, T, d = m.shape
    if T == 1 or sigma <= 0:
        return m
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=m.dtype, device=m.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    seq = m.permute(0, 2, 1).reshape(B * d, 1, T)
    seq = F.pad(seq, (radius, radius), mode="replicate")
    return F.conv1d(seq, k).view(B, d, T).permute(0, 2, 1)
