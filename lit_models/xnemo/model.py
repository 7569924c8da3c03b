"""X-NeMo: a 1-D latent motion descriptor injected only through cross-attention.

``ε_θ(z_t, t | h_ref, c)`` with ``c = P(reshape(m))``, ``m = E_m(A(D_t)) ∈ R^motion_dim`` — the motion tokens are
the ``encoder_hidden_states`` of every cross-attention layer of the denoiser (every down, mid and up block of the
tiny layout; SD-1.5's attention-free lowest blocks have none), with no spatially aligned control. Appearance comes
from the ReferenceNet (shared core). Identity-leakage guards: driving appearance augmentation ``A``, random
reference-feature masking, temporal low-pass of ``m``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lit_models.diffusion.augment import appearance_augment
from lit_models.diffusion.module import MotionState, ReferenceVideoDiffusion
from lit_models.xnemo.motion_encoder import MotionEncoder, MotionTokenizer, temporal_lowpass


class XNeMo(ReferenceVideoDiffusion):
    def build_motion(self, unet2d: nn.Module) -> None:
        cfg = self.cfg
        self.motion_encoder = MotionEncoder(cfg.motion_dim, list(cfg.motion_encoder_channels), cfg.motion_encoder_resolution,
                                           cfg.motion_encoder_pool)
        self.motion_tokens = MotionTokenizer(cfg.motion_dim, cfg.motion_token_dim, int(unet2d.config.cross_attention_dim))

    def descriptor(self, driving: torch.Tensor) -> torch.Tensor:
        """B×T×3×H×W in [0, 1] → m: B×T×motion_dim (low-passed over T when the switch is on)."""
        B, T = driving.shape[:2]
        m = self.motion_encoder(driving.flatten(0, 1)).view(B, T, -1)
        if self.cfg.use_descriptor_lowpass:
            m = temporal_lowpass(m, self.cfg.lowpass_sigma)
        return m

    def encode_motion(self, source, driving, keep_motion, generator: Optional[torch.Generator] = None,
                      keypoints=None) -> MotionState:
        B, T = driving.shape[:2]
        m = self.descriptor(driving)
        keep = keep_motion[:, None].expand(B, T).reshape(-1)
        tokens = self.motion_tokens(m.flatten(0, 1), keep)
        return {"tokens": tokens.view(B, T, *tokens.shape[1:])}

    def condition_denoiser(self, rows: MotionState, z_t, t):
        return rows["tokens"], None, None

    def prepare_driving(self, batch, driving, generator):
        if self.cfg.use_driving_augmentation:
            return appearance_augment(driving, generator, self.cfg.augmentation_strength)
        return driving

    def reference_mask_ratio(self) -> float:
        return float(self.cfg.reference_mask_ratio) if self.cfg.use_reference_masking else 0.0

    def eval_diagnostics(self, datamodule, protocol) -> dict[str, float]:
        """Does the output follow the motion descriptor? ``motion_gain`` / ``source_gain`` / ``motion_ratio`` on
        SynthFaces probe clips (``lit_models.xnemo.diagnostics``; 0 = the motion tokens are ignored, 1 = the output
        changes with the driving clip as much as the ground truth does); {} on data without SynthFaces ground truth."""
        from lit_models.xnemo.diagnostics import synthfaces_diagnostics

        return synthfaces_diagnostics(self, datamodule)
