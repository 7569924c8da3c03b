"""X-NeMo schema (Zhao et al., "X-NeMo: Expressive Neural Motion Reenactment via Disentangled Latent Attention").

``model=xnemo`` (the official layout at SD-1.5 size, loads the released weights through
``python -m lit_models.xnemo.import_official``) and ``model=xnemo_tiny`` (CPU) are variants of this one schema.

Ablation axis: ``motion_dim`` = L × d, the size of the per-frame motion descriptor ``m_t`` read by the motion
cross-attention modules as L tokens of d = ``motion_token_dim`` numbers (official 512 = 32 × 16). With d fixed (the
motion modules' key/value width), ``motion_dim`` varies the **number of motion tokens** L (``sweep=xnemo_motion_dim``:
16, 64, 256, 512 → 1, 4, 16, 32 tokens of 16): the encoder's last projection and the sin-cos table follow it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from lit_models.diffusion.config import DiffusionConfig, TemporalArch
from lit_models.registry import model_schema



# choice fields as StrEnums: a bad value fails at compose time naming the key and the choices; a member compares
# equal to (and formats as) its string
MotionInjection = StrEnum("MotionInjection", ["motion_xattn", "text_xattn"])
MotionEncoder = StrEnum("MotionEncoder", ["fan", "conv"])
ImageEncoder = StrEnum("ImageEncoder", ["clip", "clip_standin", "learned_cnn"])
NegativeMotion = StrEnum("NegativeMotion", ["reference", "null"])
InitLatents = StrEnum("InitLatents", ["noise", "blurred_reference"])
# the allowed values as strings (checked again when a model is built from a plain dict, e.g. a checkpoint's hparams)
MOTION_INJECTIONS = tuple(m.value for m in MotionInjection)
MOTION_ENCODERS = tuple(m.value for m in MotionEncoder)
IMAGE_ENCODERS = tuple(m.value for m in ImageEncoder)
NEGATIVE_MOTIONS = tuple(m.value for m in NegativeMotion)
INIT_LATENTS = tuple(m.value for m in InitLatents)


@model_schema("xnemo")
@dataclass
class XNeMoConfig(DiffusionConfig):
    _target_: str = "lit_models.xnemo.XNeMo"
    name: str = "xnemo"
    # the official temporal modules (TemporalTransformer3DModel) GroupNorm each frame: b c f h w → (b f) c h w
    temporal: TemporalArch = field(default_factory=lambda: TemporalArch(norm_stats="per_frame"))
    # ---- where motion enters -----------------------------------------------------------------------------------
    # motion_xattn (official): dedicated motion cross-attention modules (kv width motion_token_dim) before the
    #   AnimateDiff temporal module in every down / mid / up layer (incl. the attention-free 8² level); the U-Net's
    #   own cross-attention reads the reference's image embedding (image_encoder).
    # text_xattn (kept for checkpoints of that layout, lit_models/xnemo/legacy.py): the motion tokens, projected to cross_attention_dim, replace the
    #   U-Net's text context; no motion modules, no image embedding, learned null tokens for guidance.
    motion_injection: MotionInjection = MotionInjection.motion_xattn
    # ---- motion encoder E_m: driving face → m_t ∈ R^{L×d}, L·d = motion_dim ---------------------------------------
    motion_encoder: MotionEncoder = MotionEncoder.fan  # fan: official FAN_SA (224² input, 61.7 M) | conv: small CNN (tiny configs)
    motion_dim: int = 512                # L·d (official 32 × 16)
    motion_token_dim: int = 16           # d: numbers per token = key/value width of the motion modules
    motion_heads: int = 8                # heads of the motion cross-attention modules
    bbox_param: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])  # fan: head box (official: fixed)
    motion_encoder_resolution: int = 64  # conv: driving frames resized to this (fan always reads 224²)
    motion_encoder_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])   # conv only
    motion_encoder_pool: str = "flatten"  # conv only: flatten | mean
    # ---- base cross-attention context: an image embedding of the reference (motion_xattn) ----------------------
    # clip: transformers CLIPVisionModelWithProjection from image_encoder_path (frozen; sd-image-variations'
    #   ViT-L/14, projection 768), one token; clip_standin: the same network randomly initialised (numbers
    #   labelled STANDIN); learned_cnn: a small CNN trained with the model (tiny CPU configs — not CLIP).
    image_encoder: ImageEncoder = ImageEncoder.clip
    image_encoder_path: Optional[str] = None
    # ---- classifier-free guidance negative for the motion condition -------------------------------------------
    # reference (official): the reference image's own motion tokens E_m(S); null: learned null tokens (text_xattn)
    guidance_negative_motion: NegativeMotion = NegativeMotion.reference
    # DDIM's final step: True (official X-NeMo DDIM) uses ᾱ_prev = 1; False: ᾱ_0 (portraitlab default)
    set_alpha_to_one: bool = False
    # sampling start: noise (pure noise) | blurred_reference (official: the reference latent on every frame,
    # Gaussian-blurred (kernel init_blur_kernel, σ init_blur_sigma, in latent pixels), noised to the first timestep)
    init_latents: InitLatents = InitLatents.noise
    init_blur_kernel: int = 9
    init_blur_sigma: float = 18.0
    # ---- identity-leakage guards (each a switch) -------------------------------------------------------------
    use_driving_augmentation: bool = True    # appearance-only augmentation of the driving face at training
    augmentation_strength: float = 1.0
    use_reference_masking: bool = True       # mask a random fraction of ReferenceNet tokens at training
    reference_mask_ratio: float = 0.25
    use_descriptor_lowpass: bool = False     # temporal Gaussian low-pass of m over the clip's frames
    lowpass_sigma: float = 1.0               # in frames
