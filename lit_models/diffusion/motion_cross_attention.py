"""Motion cross-attention modules (X-NeMo's "motion modules"): each spatial position of a frame attends to that
frame's motion tokens, in a dedicated module inserted in every down / mid / up layer of a video U-Net, *before* the
AnimateDiff temporal module of the layer — the U-Net's own cross-attention keeps its image/text context.

One module is ``h ← h + W_out · Block(W_in · GN(h), m_t)`` per frame, where ``Block`` is
``[LN → CrossAttn(q = h, k = v = m_t) + residual] ×2 → LN → GEGLU FF + residual`` and ``m_t`` is the frame's L × d
motion-token sequence (official: 32 × 16, so ``to_k``/``to_v`` are C × 16, no q/k/v bias). That is exactly diffusers'
``Transformer2DModel`` with ``use_linear_projection=True`` and ``only_cross_attention=True`` (both attention layers
of its ``BasicTransformerBlock`` cross-attend), applied to the (b·f) frames with ``encoder_hidden_states`` = the
tokens — so this file only builds and places it:

* :class:`MotionCrossAttention` — the module (``proj_out`` zero-initialised: a no-op at init);
* :class:`MotionThenTemporal` — wraps a ``UNetMotionModel`` temporal module so the layer runs
  ``motion cross-attention → temporal attention`` (the official order), with the diffusers call signature;
* :func:`attach_motion_cross_attention` — wraps every temporal module of a ``UNetMotionModel`` and returns the
  shared :class:`MotionTokenContext` the caller fills with the tokens before each denoiser call.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class MotionTokenContext:
    """Shared per-call state: ``tokens`` (b·f) × L × d for the frames the denoiser is about to run."""

    def __init__(self):
        self.tokens: Optional[torch.Tensor] = None
        self.num_modules = 0                # how many motion modules read it (set by attach_motion_cross_attention)

    def clear(self) -> None:
        self.tokens = None


class MotionCrossAttention(nn.Module):
    """One motion module on C channels: ``hidden`` (b·f)×C×h×w, ``tokens`` (b·f)×L×token_dim → same shape."""

    def __init__(self, channels: int, token_dim: int = 16, num_heads: int = 8, norm_num_groups: int = 32,
                 zero_init: bool = True):
        super().__init__()
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        if channels % num_heads:
            raise ValueError(f"motion cross-attention: {channels} channels do not split over {num_heads} heads")
        self.transformer = Transformer2DModel(num_attention_heads=num_heads, attention_head_dim=channels // num_heads,
                                              in_channels=channels, num_layers=1, cross_attention_dim=token_dim,
                                              norm_num_groups=norm_num_groups, use_linear_projection=True,
                                              only_cross_attention=True, attention_bias=False, activation_fn="geglu")
        if zero_init:
            nn.init.zeros_(self.transformer.proj_out.weight)
            nn.init.zeros_(self.transformer.proj_out.bias)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[0] != hidden.shape[0]:
            raise ValueError(f"motion cross-attention: {tokens.shape[0]} token rows for {hidden.shape[0]} frames")
        return self.transformer(hidden, encoder_hidden_states=tokens.to(hidden.dtype), return_dict=False)[0]

    def forward_video(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The official call layout: ``hidden`` b×C×f×h×w, ``tokens`` b×f×L×d → b×C×f×h×w."""
        b, c, f, h, w = hidden.shape
        out = self(hidden.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), tokens.flatten(0, 1))
        return out.view(b, f, c, h, w).permute(0, 2, 1, 3, 4)


class MotionThenTemporal(nn.Module):
    """``motion`` (cross-attention to the frame's motion tokens) then ``temporal`` (the AnimateDiff module), with the
    temporal module's call signature so diffusers' motion blocks run it unchanged."""

    def __init__(self, motion: MotionCrossAttention, temporal: nn.Module, context: MotionTokenContext):
        super().__init__()
        self.motion = motion
        self.temporal = temporal
        self._context = [context]           # a list: not a sub-module, not in the state dict

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, class_labels=None, num_frames: int = 1,
                cross_attention_kwargs=None):
        tokens = self._context[0].tokens
        if tokens is None:
            raise RuntimeError("motion cross-attention: no motion tokens set for this denoiser call "
                               "(MotionTokenContext.tokens)")
        hidden_states = self.motion(hidden_states, tokens)
        return self.temporal(hidden_states, encoder_hidden_states, timestep, class_labels, num_frames,
                             cross_attention_kwargs)


def attach_motion_cross_attention(video_unet: nn.Module, token_dim: int, num_heads: int = 8,
                                  norm_num_groups: Optional[int] = None, zero_init: bool = True) -> MotionTokenContext:
    """Wrap every ``motion_modules[i]`` (temporal module) of a diffusers ``UNetMotionModel`` — all down levels
    (incl. the attention-free lowest one), the mid block and all up levels — in :class:`MotionThenTemporal`.
    Returns the context to fill with (b·f)×L×token_dim tokens before each forward."""
    context = MotionTokenContext()
    groups = norm_num_groups or int(video_unet.config.norm_num_groups)
    blocks = list(video_unet.down_blocks) + [video_unet.mid_block] + list(video_unet.up_blocks)
    n = 0
    for block in blocks:
        mods = getattr(block, "motion_modules", None)
        if mods is None:
            continue
        for i, temporal in enumerate(mods):
            channels = int(temporal.in_channels)
            mods[i] = MotionThenTemporal(MotionCrossAttention(channels, token_dim, num_heads, groups, zero_init),
                                         temporal, context)
            n += 1
    if n == 0:
        raise ValueError("attach_motion_cross_attention: the U-Net has no temporal modules to pair with")
    context.num_modules = n
    return context
