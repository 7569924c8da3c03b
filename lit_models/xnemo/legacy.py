"""X-NeMo's ``motion_injection=text_xattn`` variant, kept so that checkpoints of it still load and sample.

In it the motion tokens, projected to the U-Net's ``cross_attention_dim`` (:class:`MotionTokenizer`), *are* the
U-Net's text context in every cross-attention block; there are no motion cross-attention modules and no image
embedding, and classifier-free guidance uses learned null tokens. The official layout (``motion_xattn``) is
``lit_models.xnemo.model``; everything that differs for ``text_xattn`` is here: building the tokenizer, the motion
state, the denoiser conditioning, the ReferenceNet context, and the upgrade of configs that predate the
``motion_injection`` key.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lit_models.diffusion.module import MotionState, ReferenceVideoDiffusion
from lit_models.xnemo.motion_encoder import MotionTokenizer

# the config keys of the official layout: a model config with none of them is a text_xattn checkpoint's
OFFICIAL_LAYOUT_KEYS = ("motion_injection", "motion_encoder", "motion_heads", "bbox_param", "image_encoder",
                        "image_encoder_path", "guidance_negative_motion", "set_alpha_to_one", "init_latents",
                        "init_blur_kernel", "init_blur_sigma")


def upgrade_legacy_config(cfg):
    """A config without ``motion_injection`` (motion tokens as the U-Net's text context, conv encoder) → the same
    network under the current schema (``motion_injection=text_xattn``, ``motion_encoder=conv``), so its
    checkpoints load; any other config is returned as is."""
    from omegaconf import DictConfig, OmegaConf

    from lit_models.optim import upgrade_flat_optim_keys

    cfg = upgrade_flat_optim_keys(cfg)
    if not isinstance(cfg, (dict, DictConfig)) or "motion_injection" in cfg:
        return cfg
    from lit_models.xnemo.config import XNeMoConfig

    old = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    merged = OmegaConf.merge(OmegaConf.structured(XNeMoConfig), old,
                             {"motion_injection": "text_xattn", "motion_encoder": "conv"})
    return OmegaConf.create(OmegaConf.to_container(merged, resolve=True))


class LegacyTextXattn:
    """The ``text_xattn`` behaviour of an :class:`~lit_models.xnemo.model.XNeMo` model (``model.legacy``; None
    for the official layout)."""

    def __init__(self, model: nn.Module, token_dim: int, cross_attention_dim: int):
        model.motion_tokens = MotionTokenizer(model.cfg.motion_dim, token_dim, cross_attention_dim)
        self._model = [model]          # not a sub-module: the tokenizer is registered on the model itself

    def motion_state(self, m: torch.Tensor, keep_motion: torch.Tensor) -> MotionState:
        """m B×T×motion_dim → ``tokens`` B×T×L×D (the learned null tokens where ``keep_motion`` is False)."""
        B, T = m.shape[:2]
        keep = keep_motion[:, None].expand(B, T).reshape(-1)
        tokens = self._model[0].motion_tokens(m.flatten(0, 1), keep)
        return {"tokens": tokens.view(B, T, *tokens.shape[1:])}

    @staticmethod
    def condition_denoiser(rows: MotionState):
        """The U-Net's cross-attention context is the motion tokens; no residuals."""
        return rows["tokens"], None, None

    def reference_context(self, z_ref: torch.Tensor, source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ReferenceNet reads the core's learned null prompt (no image embedding in this variant)."""
        return ReferenceVideoDiffusion.reference_context(self._model[0], z_ref, source)
