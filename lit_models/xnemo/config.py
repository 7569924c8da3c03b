"""X-NeMo schema (Zhao et al., "X-NeMo: Expressive Neural Motion Reenactment via Disentangled Latent Attention").

``model=xnemo`` (SD-1.5-sized denoiser) and ``model=xnemo_tiny`` (CPU) are variants of this one schema.
Ablation axis: ``motion_dim`` (size of the 1-D motion descriptor ``m``; ``sweep=xnemo_motion_dim``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lit_models.diffusion.config import DiffusionConfig
from lit_models.registry import model_schema


@model_schema("xnemo")
@dataclass
class XNeMoConfig(DiffusionConfig):
    _target_: str = "lit_models.xnemo.XNeMo"
    name: str = "xnemo"
    # ---- motion encoder E_m: driving face → m ∈ R^motion_dim → motion_dim / motion_token_dim tokens ----------
    motion_dim: int = 512
    motion_token_dim: int = 16           # numbers per token: m is reshaped to (motion_dim / motion_token_dim) tokens
    motion_encoder_resolution: int = 64  # driving frames are resized to this before E_m
    motion_encoder_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    motion_encoder_pool: str = "flatten"  # flatten | mean: how E_m's last feature map becomes m (mean ≈ blind to translation)
    # ---- identity-leakage guards (each a switch) -------------------------------------------------------------
    use_driving_augmentation: bool = True    # appearance-only augmentation of the driving face at training
    augmentation_strength: float = 1.0
    use_reference_masking: bool = True       # mask a random fraction of ReferenceNet tokens at training
    reference_mask_ratio: float = 0.25
    use_descriptor_lowpass: bool = False     # temporal Gaussian low-pass of m over the clip's frames
    lowpass_sigma: float = 1.0               # in frames
