"""Schema of ``model=imposter*`` configs (ImPoster: per-pair personalization of a text-to-image LDM)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from lit_models.base import ModelConfig
from lit_models.optim import AdamConfig
from lit_models.registry import model_schema

# choice fields as StrEnums: a bad value fails at compose time naming the key and the choices
BackboneKind = StrEnum("BackboneKind", ["pretrained", "random_init"])
Finetune = StrEnum("Finetune", ["full", "lora", "full_lora"])
BetaSchedule = StrEnum("BetaSchedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])  # diffusers' DDPM and DDIM
PredictionType = StrEnum("PredictionType", ["epsilon", "v_prediction"])   # what ImPoster's DDIM loop reads

# Stable Diffusion 2.1-base U-Net (stabilityai/stable-diffusion-2-1-base, unet/config.json): 865,910,724 parameters.
SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280], attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
    use_linear_projection=True, norm_num_groups=32,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)
SD21_BASE_UNET_PARAMS = 865_910_724


@dataclass
class UNetSpec:
    """``diffusers.UNet2DConditionModel`` arguments used when ``backbone=random_init`` (no pretrained weights)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    attention_head_dim: list[int] = field(default_factory=lambda: [8, 8])
    norm_num_groups: int = 8
    use_linear_projection: bool = False
    down_block_types: list[str] = field(default_factory=lambda: ["CrossAttnDownBlock2D", "DownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: ["UpBlock2D", "CrossAttnUpBlock2D"])


@dataclass
class TextSpec:
    """A small ``transformers.CLIPTextModel`` and a byte-level tokenizer built from config (``backbone=random_init``)."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_length: int = 32


@model_schema("imposter")
@dataclass
class ImPosterConfig(ModelConfig):
    """ImPoster (Kothandaraman et al. 2024): fine-tune a T2I LDM on one (source, driving) pair, then sample the
    source subject doing the driving action with text guidance (driving prompt, then target prompt) and frequency
    guidance (Fourier phase toward the driving image, amplitude toward the source)."""

    _target_: str = "lit_models.imposter.ImPoster"
    name: str = "imposter"
    resolution: int = 512
    # the released train1.py: Adam over unet.parameters(), lr 2e-6
    optimizer: AdamConfig = field(default_factory=lambda: AdamConfig(lr=2e-6))
    # ---- backbone -------------------------------------------------------------------------------------------
    # pretrained: diffusers folder layout (unet/ vae/ text_encoder/ tokenizer/ scheduler/) from a local path or hub id
    # random_init: U-Net and text encoder built from `unet` / `text` with random weights (tiny tests; labelled so)
    backbone: BackboneKind = BackboneKind.pretrained
    pretrained_model_name_or_path: Optional[str] = "stabilityai/stable-diffusion-2-1-base"
    revision: Optional[str] = None
    local_files_only: bool = False
    use_vae: bool = True              # False: pixel-space diffusion (3 channels, [-1, 1]); random_init only
    unet: UNetSpec = field(default_factory=UNetSpec)
    text: TextSpec = field(default_factory=TextSpec)
    # ---- fine-tuning ----------------------------------------------------------------------------------------
    # full: every U-Net weight is trained (the released code: Adam over unet.parameters(), lr 2e-6; default)
    # lora: only peft LoRA adapters on `lora_target_modules` (U-Net frozen); saved with peft's save_pretrained
    # full_lora: the released code's exact parameter set — rank-`lora_rank` LoRA on every attention projection AND
    #            the whole U-Net unfrozen (its LoRA up-weights start at zero there; ours start gaussian)
    finetune: Finetune = Finetune.full
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # the released code denoises the source and the driving latent with the SAME noise and timestep in each step
    shared_noise: bool = True
    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = BetaSchedule.scaled_linear
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: PredictionType = PredictionType.epsilon  # epsilon | v_prediction
    lambda_source: float = 1.0        # denoising loss on the source image with its caption
    lambda_driving: float = 1.0       # denoising loss on the driving image with its caption
    # ---- prompts (a batch's `caption_source` / `caption_driving` / `target_prompt` take precedence) -------------
    source_caption: str = "a photo of a person"
    driving_caption: str = "a photo of a person touching their forehead"
    target_prompt: str = "a photo of the person touching their forehead"
    # ---- sampling -------------------------------------------------------------------------------------------
    num_inference_steps: int = 50
    driving_prompt_steps: int = 6     # K: the first K DDIM steps use the driving prompt, the rest the target (official 6)
    cfg_scale: float = 7.5            # classifier-free text guidance (1 = off)
    eta: float = 0.0
    sample_seed: int = 0
    # ---- frequency guidance: z <- z - step * grad_z(w_phase * L_phase + w_amp * L_amp) after every DDIM step ---
    # OURS, not the released one: the released pipeline computes its phase/amplitude losses under no_grad and
    # re-wraps them in Variable(requires_grad=True), so latents.grad stays None and its Adam step never moves the
    # latent (METHODS.md §5). Here the gradient reaches the latent; 0 = the released behaviour (plain sampling).
    freq_guidance_scale: float = 0.05 # the explicit step size η; 0 = plain sampling
    freq_phase_weight: float = 1.0    # L_phase: 1 - amplitude-weighted cos(phase(x0_hat) - phase(driving))
    freq_amp_weight: float = 0.1      # L_amp: mean |log1p|F(x0_hat)| - log1p|F(source)||
    freq_guidance_until: float = 1.0  # fraction of the DDIM steps that receive guidance
    use_freq_grad_norm: bool = True   # step along g / rms(g) per sample, so the step size is in latent units
