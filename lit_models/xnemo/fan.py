"""X-NeMo's official motion encoder ``E_m`` (``MotEncoder_withExtra``): a FAN landmark backbone with three patch
self-attention blocks (``FAN_SA``) → 512-d face-motion feature → with a head-box embedding, 32 tokens × 16 dims
plus a fixed 1-D sin-cos table.

Re-implemented from the description in ``fixtures/official/xnemo/structure.md`` (no official code copied); parameter
names follow the official state dict after :func:`lit_models.xnemo.import_official.rename_key` (the transformer
blocks are diffusers ``BasicTransformerBlock`` s: ``attention_blocks.0 → attn1``, ``norms.0 → norm1``,
``ff_norm → norm3``), so ``xnemo_motion_encoder.pth`` loads strictly.

Paper symbols: the driving face crop ``D_t`` (224², RGB in [-1, 1]) and its head box ``b_t`` (3 numbers; the official
script fixes it to ``[0, 0, 1]``) → ``m_t = reshape(W_f [FAN(D_t); MLP(b_t)]) + PE`` ∈ R^{L × d}, ``L·d = 512``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos table (MAE / diffusers ``get_1d_sincos_pos_embed_from_grid``): ``[sin(p ω) | cos(p ω)]`` with
    ``ω_i = 10000^{-2i/dim}``, first ``dim/2`` columns sin, last cos; computed in float64."""
    if dim % 2:
        raise ValueError(f"sin-cos table needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.to(torch.float64).reshape(-1)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


class ConvBlock(nn.Module):
    """FAN's bottleneck: (BN-ReLU-conv3×3) ×3 with widths C/2, C/4, C/4, concatenated, plus the (projected) input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout // 2)
        self.conv2 = nn.Conv2d(cout // 2, cout // 4, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout // 4)
        self.conv3 = nn.Conv2d(cout // 4, cout // 4, 3, padding=1, bias=False)
        self.downsample = (nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False))
                           if cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.conv1(F.relu(self.bn1(x)))
        o2 = self.conv2(F.relu(self.bn2(o1)))
        o3 = self.conv3(F.relu(self.bn3(o2)))
        res = x if self.downsample is None else self.downsample(x)
        return torch.cat([o1, o2, o3], dim=1) + res


class HourGlass(nn.Module):
    """FAN hourglass of ``depth`` levels at 256 channels: ``b1`` (skip) + ``b2`` → deeper level (``b2_plus`` at the
    bottom) → ``b3`` → bilinear up-sampling. Its dropout is a no-op in eval and is kept for training parity."""

    def __init__(self, depth: int = 4, features: int = 256):
        super().__init__()
        self.depth = depth
        self.dropout = nn.Dropout(0.5)
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
            if level == 1:
                self.add_module(f"b2_plus_{level}", ConvBlock(features, features))
            self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up1 = self.dropout(self._modules[f"b1_{level}"](x))
        low = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        low = self._level(level - 1, low) if level > 1 else self._modules[f"b2_plus_{level}"](low)
        low = self._modules[f"b3_{level}"](low)
        return up1 + F.interpolate(low, size=up1.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class PatchSelfAttention(nn.Module):
    """FAN_SA's attention block on a C×H×W map: GroupNorm → patchify (p×p, diffusers ``PatchEmbed``, fixed 2-D
    sin-cos table) → one transformer block (self-attention, 8 heads × 128, GEGLU) → each token's 1024 numbers read
    as p² sub-pixels of 1024/p² → ``proj_out`` → C (zero-initialised) → + input."""

    def __init__(self, channels: int, sample_size: int, patch_size: int, heads: int = 8, head_dim: int = 128,
                 norm_groups: int = 32):
        super().__init__()
        from diffusers.models.attention import BasicTransformerBlock
        from diffusers.models.embeddings import PatchEmbed

        inner = heads * head_dim
        if inner % patch_size**2:
            raise ValueError(f"inner width {inner} is not divisible by patch_size²={patch_size**2}")
        self.channels, self.patch_size = channels, patch_size
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size, in_channels=channels,
                                    embed_dim=inner, interpolation_scale=1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, head_dim, activation_fn="geglu",
                                                                       attention_bias=False)])
        self.proj_out = nn.Linear(inner // patch_size**2, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        p = self.patch_size
        h = self.pos_embed(self.norm(x))                      # N × (H/p · W/p) × inner
        for block in self.transformer_blocks:
            h = block(h)
        h = self.proj_out(h.reshape(N, H // p, W // p, p, p, -1))
        h = torch.einsum("nhwpqc->nchpwq", h).reshape(N, C, H, W)
        return h + x


class FANSA(nn.Module):
    """FAN_SA: 224² face → 512-d face-motion feature (68-channel landmark-heatmap layer, 28² conv map, fc)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        self.m0 = HourGlass(4, 256)
        self.top_m_0 = ConvBlock(256, 256)
        self.conv_last0 = nn.Conv2d(256, 256, 1)
        self.l0 = nn.Conv2d(256, 68, 1)
        self.bn_end0 = nn.BatchNorm2d(256)
        self.conv6 = nn.Conv2d(68, 1, 3, stride=2, padding=1)
        self.fc = nn.Linear(28 * 28, 512)
        self.bn5 = nn.BatchNorm2d(68)
        self.att_1 = PatchSelfAttention(128, 112, 4)
        self.att_2 = PatchSelfAttention(256, 56, 2)
        self.att_3 = PatchSelfAttention(256, 56, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))                   # 64 × 112²
        x = self.att_1(self.conv2(x))                         # 128 × 112²
        x = self.conv4(self.conv3(F.max_pool2d(x, 2)))        # 256 × 56²
        x = self.att_2(x)
        ll = self.bn_end0(self.conv_last0(self.top_m_0(self.m0(x))))
        ll = self.att_3(ll)
        net = F.relu(self.bn5(self.l0(F.relu(ll))))           # 68 × 56² heatmap layer
        net = self.conv6(net).flatten(1)                      # 28² = 784
        return self.fc(F.relu(net))


class FANMotionEncoder(nn.Module):
    """``E_m`` = official ``MotEncoder_withExtra``: ``x`` B×3×F×224×224 (or B×3×224×224) in [-1, 1] and the head box
    ``emb`` B×F×3 (B×3) → motion tokens B×F×L×d (B×L×d), ``L·d = motion_dim`` (official 512 = 32 tokens × 16).
    ``motion_dim`` sets ``final_proj``'s output (the FAN feature stays 512-d) and the sin-cos table's length."""

    feature_dim = 512

    def __init__(self, extra_feat_dim: int = 3, token_dim: int = 16, motion_dim: int = 512):
        super().__init__()
        if motion_dim % token_dim:
            raise ValueError(f"motion_dim={motion_dim} must be a multiple of motion_token_dim={token_dim}")
        self.token_dim, self.motion_dim = token_dim, motion_dim
        self.model = FANSA()
        self.register_buffer("pe", sincos_1d(token_dim, torch.arange(motion_dim // token_dim)).float()[None])
        self.bbox_proj = nn.Sequential(nn.Linear(extra_feat_dim, 64), nn.ReLU(), nn.Identity(), nn.Linear(64, 64))
        self.final_proj = nn.Linear(self.feature_dim + 64, motion_dim)

    @property
    def num_tokens(self) -> int:
        return self.motion_dim // self.token_dim

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        video = x.ndim == 5
        if video:
            B, _, T = x.shape[:3]
            x = x.permute(0, 2, 1, 3, 4).flatten(0, 1)
            emb = emb.flatten(0, 1)
        feat = self.model(x)
        latent = self.final_proj(torch.cat([feat, self.bbox_proj(emb)], dim=1))
        latent = latent.view(latent.shape[0], self.num_tokens, self.token_dim) + self.pe
        return latent.view(B, T, *latent.shape[1:]) if video else latent


def fan_parameter_count() -> int:
    """61,665,393 for the official configuration (checkpoint_keys.json)."""
    with torch.device("meta"):
        return sum(p.numel() for p in FANMotionEncoder().parameters())


__all__ = ["FANMotionEncoder", "FANSA", "ConvBlock", "HourGlass", "PatchSelfAttention", "sincos_1d",
           "fan_parameter_count"]
