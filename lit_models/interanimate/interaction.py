"""InterAnimate's region-aware interaction mechanism (Lin et al., "InterAnimate: Taming Region-aware Diffusion Model
for Realistic Human Interaction Animation", 2025): learnable spatial interaction latents ``L_s ∈ R^{n×d}`` and
temporal interaction latents ``L_t ∈ R^{m×d}``, read by an interaction block after every spatial transformer
(spatial latents) and every temporal motion module (temporal latents) of the denoiser.

One block, for tokens ``h ∈ R^{N×P×C}`` (P tokens per row: pixels of a frame, or frames of a pixel):

1. soft quantization: ``f = W_f LN(h)``, ``w = softmax_k(cos(f, L_k) / τ)`` (``Σ_k w = 1`` per token), and the
   quantized latents ``L̃ = L + (wᵀ f) / (wᵀ 1 + 1)`` (each latent moves toward the features assigned to it);
2. cross-attention of the features (queries ``W_q LN(h)``) over the quantized latents (keys/values ``W_k L̃``,
   ``W_v L̃``), output ``u = W_o Attn(·)``;
3. masking: ``h' = h + M ⊙ u`` with ``M`` the hand ∪ face region at the token's resolution (area fraction), so the
   update is exactly zero outside the regions.

``W_o`` is zero-initialised (``use_zero_init``): the denoiser starts unchanged.

``orthogonality_loss(L) = ‖L̂ L̂ᵀ − I‖²_F / n²`` on row-normalised latents ``L̂`` (batched: mean over rows). Where it
acts (``ortho_target``): ``raw`` on the learned ``L_s`` / ``L_t``; ``quantized`` (default) on the quantized latents
``L̃`` of every block — what the attention's keys and values are read from. At the full-size initialisation the raw
latents are already near-orthogonal (mean |cos| ≈ 0.045 for d = 320) while ``L̃ ≈ L + f̄`` is dominated by the
features assigned to every latent alike (mean |cos| near 1), so a loss on ``L`` barely constrains what attention
reads (``benchmarks/interanimate_ortho.py``). The quantized loss is computed on ``L̃`` rebuilt from the detached
U-Net features: it trains ``L``, ``W_f`` and the block's norm, never the backbone.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def soft_quantization_weights(features: torch.Tensor, latents: torch.Tensor, temperature: float) -> torch.Tensor:
    """``w = softmax_k(cos(f, L_k) / τ)``: features N×P×d, latents n×d → N×P×n, rows sum to 1."""
    sim = F.normalize(features, dim=-1) @ F.normalize(latents, dim=-1).t()
    return torch.softmax(sim / temperature, dim=-1)


def orthogonality_loss(latents: torch.Tensor) -> torch.Tensor:
    """``‖L̂L̂ᵀ − I‖²_F / n²`` with ``L̂`` the row-normalised latents: n×d, or …×n×d (mean over the leading rows)."""
    n = latents.shape[-2]
    lh = F.normalize(latents, dim=-1)
    gram = lh @ lh.transpose(-1, -2)
    eye = torch.eye(n, device=latents.device, dtype=gram.dtype)
    return (gram - eye).pow(2).sum((-2, -1)).mean() / (n * n)


def mean_abs_cosine_tensor(latents: torch.Tensor) -> torch.Tensor:
    """Mean |cos| between distinct latents (off-diagonal of L̂L̂ᵀ) of n×d or …×n×d latents, as a 0-d tensor."""
    n = latents.shape[-2]
    lh = F.normalize(latents.detach().float(), dim=-1)
    gram = (lh @ lh.transpose(-1, -2)).abs()
    off = gram.sum((-2, -1)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return off.mean() / max(n * (n - 1), 1)


def mean_abs_cosine(latents: torch.Tensor) -> float:
    """Mean |cos| between distinct latents (off-diagonal of L̂L̂ᵀ): the sweep's latent-correlation number."""
    return float(mean_abs_cosine_tensor(latents))


class InteractionBlock(nn.Module):
    def __init__(self, channels: int, latent_dim: int, heads: int, temperature: float, use_zero_init: bool = True):
        super().__init__()
        if latent_dim % heads:
            raise ValueError(f"interaction latent_dim={latent_dim} is not divisible by heads={heads}")
        self.heads, self.temperature = heads, temperature
        self.norm = nn.LayerNorm(channels)
        self.to_feat = nn.Linear(channels, latent_dim)
        self.to_q = nn.Linear(channels, latent_dim, bias=False)
        self.to_k = nn.Linear(latent_dim, latent_dim, bias=False)
        self.to_v = nn.Linear(latent_dim, latent_dim, bias=False)
        self.to_out = nn.Linear(latent_dim, channels)
        if use_zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def quantize(self, h: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: (weights N×P×n summing to 1 over n, quantized latents L̃ N×n×d)."""
        f = self.to_feat(self.norm(h))
        w = soft_quantization_weights(f, latents, self.temperature)
        assigned = w.transpose(1, 2) @ f                              # N×n×d
        mass = w.sum(dim=1).unsqueeze(-1)                             # N×n×1
        return w, latents.unsqueeze(0) + assigned / (mass + 1.0)

    def forward(self, h: torch.Tensor, latents: torch.Tensor, mask: Optional[torch.Tensor],
                ctx: Optional["InteractionContext"] = None, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """h N×P×C, latents n×d, mask N×P×1 (or None: everywhere) → (h + M⊙u, quantization weights).

        ``ctx``: records the quantized latents' mean |cos| under ``name`` and, when ``ctx.ortho`` is set (training
        with ``ortho_target=quantized``) and autograd is on, their orthogonality loss on L̃ rebuilt from the detached
        features, kept in ``ctx.ortho_terms`` while that is a dict. (It is computed, not kept, in a gradient
        checkpoint's recomputation, which must repeat the forward's operations.)"""
        w, lq = self.quantize(h, latents)
        if ctx is not None:
            ctx.quantized_cos[name] = mean_abs_cosine_tensor(lq)
            if ctx.ortho and torch.is_grad_enabled():
                term = orthogonality_loss(self.quantize(h.detach(), latents)[1])
                if ctx.ortho_terms is not None:
                    ctx.ortho_terms[name] = term
        N, P, _ = h.shape
        q = self.to_q(self.norm(h)).view(N, P, self.heads, -1).transpose(1, 2)
        k = self.to_k(lq).view(N, lq.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(lq).view(N, lq.shape[1], self.heads, -1).transpose(1, 2)
        u = self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, P, -1))
        if mask is not None:
            u = u * mask
        return h + u, w


def region_mask_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N×1×H×W region mask → N×1×h×w area fractions (exactly 0 where no masked pixel falls in a cell)."""
    if mask.shape[-2:] == tuple(size):
        return mask
    if mask.shape[-2] % size[0] == 0 and mask.shape[-1] % size[1] == 0:
        return F.adaptive_avg_pool2d(mask, size)
    return F.interpolate(mask, size=size, mode="area")


class InteractionContext:
    """Per denoiser call: the N×1×H×W region masks of the rows being denoised (set by ``condition_denoiser``)."""

    def __init__(self):
        self.mask: Optional[torch.Tensor] = None
        self.last_weights: dict[str, torch.Tensor] = {}
        self.record = False
        self.ortho = False                                   # compute the quantized orthogonality terms (training)
        # block name → ‖L̃̂L̃̂ᵀ − I‖² / n² (mean over rows) while a training forward collects them; None otherwise
        self.ortho_terms: Optional[dict[str, torch.Tensor]] = None
        self.quantized_cos: dict[str, torch.Tensor] = {}     # block name → mean |cos| of L̃ in its last forward


def _spatial_hook(name: str, block: InteractionBlock, latents: Callable[[], torch.Tensor], ctx: InteractionContext):
    def hook(module, args, kwargs, output):
        is_tuple = isinstance(output, tuple)
        x = output[0] if is_tuple else (output.sample if hasattr(output, "sample") else output)
        N, C, H, W = x.shape
        m = None if ctx.mask is None else region_mask_at(ctx.mask.to(x.dtype), (H, W)).flatten(2).transpose(1, 2)
        tokens = x.flatten(2).transpose(1, 2)
        out, w = block(tokens, latents(), m, ctx, name)
        if ctx.record:
            ctx.last_weights[name] = w.detach()
        y = out.transpose(1, 2).reshape(N, C, H, W)
        if is_tuple:
            return (y, *output[1:])
        if hasattr(output, "sample"):
            output.sample = y
            return output
        return y

    return hook


def _temporal_hook(name: str, block: InteractionBlock, latents: Callable[[], torch.Tensor], ctx: InteractionContext):
    def hook(module, args, kwargs, output):
        x = output[0] if isinstance(output, tuple) else output
        num_frames = kwargs.get("num_frames", args[4] if len(args) > 4 else None)
        if num_frames is None:
            raise RuntimeError(f"{name}: temporal interaction block needs the motion module's num_frames")
        N, C, H, W = x.shape
        B, T = N // num_frames, num_frames
        tokens = x.view(B, T, C, H, W).permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)
        m = None
        if ctx.mask is not None:
            mm = region_mask_at(ctx.mask.to(x.dtype), (H, W)).view(B, T, 1, H, W)
            m = mm.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, 1)
        out, w = block(tokens, latents(), m, ctx, name)
        if ctx.record:
            ctx.last_weights[name] = w.detach()
        y = out.view(B, H, W, T, C).permute(0, 3, 4, 1, 2).reshape(N, C, H, W)
        return (y, *output[1:]) if isinstance(output, tuple) else y

    return hook


def is_spatial_transformer(name: str, module: nn.Module) -> bool:
    return type(module).__name__ == "Transformer2DModel" and ".attentions." in f".{name}"


def is_motion_module(name: str, module: nn.Module) -> bool:
    return type(module).__name__ == "AnimateDiffTransformer3D"


def channels_of(module: nn.Module) -> int:
    if hasattr(module, "config") and getattr(module.config, "in_channels", None):
        return int(module.config.in_channels)
    return int(module.in_channels)
