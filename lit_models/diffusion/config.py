"""Config schema shared by every reference-conditioned video diffusion method (X-Portrait, X-NeMo, InterAnimate; ImPoster has its own schema).

Not registered as a schema itself: each method subclasses :class:`DiffusionConfig` and registers its own
``@model_schema``. Tiny vs full models are YAML variants of the same schema (``model=xnemo_tiny`` / ``model=xnemo``).

Field groups
* ``unet``: the denoiser's spatial layout, the kwargs of diffusers ``UNet2DConditionModel`` (SD-1.5 defaults);
  ignored when ``pretrained_model_name_or_path`` is set (the checkpoint's ``unet/config.json`` wins).
* ``temporal``: AnimateDiff-style temporal attention (diffusers ``UNetMotionModel`` motion modules, zero-initialised).
* ``latent``: ``pixel`` (tiny configs: the U-Net works on RGB in [-1, 1]) or ``vae`` (``AutoencoderKL`` latents).
* scheduler / sampler / classifier-free guidance / windowed long-video sampling.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from lit_models.base import ModelConfig
from lit_models.optim import DiffusersSchedulerConfig

# choice fields as StrEnums: a bad value fails at compose time naming the key and the choices; a member compares
# equal to (and formats as) its string. Code reached without the schema converts with toolbox.choices.as_choice.
UpPlacement = StrEnum("UpPlacement", ["before_upsample", "after_upsample"])
NormStats = StrEnum("NormStats", ["per_clip", "per_frame"])
Latent = StrEnum("Latent", ["pixel", "vae"])
VAEType = StrEnum("VAEType", ["kl", "temporal_decoder"])
ReferenceTimestep = StrEnum("ReferenceTimestep", ["zero", "current"])
# the schedules diffusers' DDPM (training), DDIM and DPM-Solver++ (sampling) all implement
BetaSchedule = StrEnum("BetaSchedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
PredictionType = StrEnum("PredictionType", ["epsilon", "v_prediction", "sample"])
Sampler = StrEnum("Sampler", ["ddim", "dpmpp"])
TimestepSpacing = StrEnum("TimestepSpacing", ["leading", "trailing", "linspace", "ldm_uniform"])
WindowSchedule = StrEnum("WindowSchedule", ["blend", "circular", "uniform"])
InitialLatent = StrEnum("InitialLatent", ["noise", "noised_reference"])
ReferenceLatent = StrEnum("ReferenceLatent", ["mean", "sample_per_frame"])


@dataclass
class UNetArch:
    """diffusers ``UNet2DConditionModel`` kwargs (defaults: Stable Diffusion 1.5's ``unet/config.json``)."""

    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])
    down_block_types: list[str] = field(default_factory=lambda: [
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: [
        "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    layers_per_block: int = 2
    attention_head_dim: int = 8          # SD-1.5 naming: this is the number of heads
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    in_channels: int = 4                 # 4 for VAE latents, 3 for pixel space
    out_channels: int = 4
    sample_size: int = 64


@dataclass
class TemporalArch:
    """AnimateDiff motion modules (diffusers ``AnimateDiffTransformer3D``) inserted after every spatial block."""

    use_temporal: bool = True
    num_attention_heads: int = 8
    max_seq_length: int = 32             # longest clip (window) the positional encoding covers
    use_mid_block: bool = True
    zero_init: bool = True               # zero the output projection: the video U-Net starts equal to the image U-Net
    # where the last motion module of an up block runs: before_upsample (diffusers ``UNetMotionModel``) |
    # after_upsample (the original AnimateDiff v1 / X-Portrait code: after the whole LDM ``output_blocks[j]``, i.e.
    # after its Upsample, at the doubled resolution; same weights, different computation)
    up_placement: UpPlacement = UpPlacement.before_upsample
    # GroupNorm statistics of a motion module's input: per_clip (diffusers ``AnimateDiffTransformer3D``: over the
    # frames of a clip together) | per_frame (the original AnimateDiff v1 / X-Portrait code normalises the
    # (b·f)×C×H×W tensor, each frame on its own)
    norm_stats: NormStats = NormStats.per_clip


@dataclass
class DiffusionConfig(ModelConfig):
    # ---- weights --------------------------------------------------------------------------------------------
    # A Stable-Diffusion-1.5-shaped folder (unet/, vae/ subfolders) or hub id; None builds the U-Net from `unet`.
    pretrained_model_name_or_path: Optional[str] = None
    vae_path: Optional[str] = None       # defaults to <pretrained_model_name_or_path>/vae
    local_files_only: bool = True        # never reach the network for weights unless asked
    latent: Latent = Latent.pixel        # pixel | vae
    pixel_unshuffle: int = 1             # latent=pixel: space-to-depth factor (2: 3×32² → 12×16²)
    vae_scaling_factor: float = 0.18215
    # latent=vae: kl (SD AutoencoderKL from vae_path or <pretrained_model_name_or_path>/vae) | temporal_decoder
    # (SVD-xt's AutoencoderKLTemporalDecoder from vae_path; its decoder mixes the frames of a clip)
    vae_type: VAEType = VAEType.kl
    vae_decode_chunk: int = 25           # frames decoded together (one temporal clip for temporal_decoder)
    # latent=vae without a weights folder: an ``AutoencoderKL`` built from these kwargs, whose weights must come from
    # a checkpoint (an importer's output); encoding/decoding before they are loaded raises
    vae_config: Optional[dict[str, Any]] = None
    unet: UNetArch = field(default_factory=UNetArch)
    temporal: TemporalArch = field(default_factory=TemporalArch)
    # ---- appearance reference (ReferenceNet) ----------------------------------------------------------------
    use_reference_net: bool = True       # a second U-Net on the clean reference latent feeds the denoiser's self-attention
    train_reference_net: bool = True
    num_context_tokens: int = 1          # learned cross-attention context where a method has no other (null prompt)
    # timestep of the ReferenceNet pass: zero (clean reference at t = 0; X-NeMo, Animate-Anyone) | current (the
    # denoiser's own t at every step, as X-Portrait's official ``apply_model`` does; the bank is rewritten per step)
    reference_timestep: ReferenceTimestep = ReferenceTimestep.zero
    # ---- DDPM training --------------------------------------------------------------------------------------
    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = BetaSchedule.scaled_linear
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # epsilon (SD-1.5) | v_prediction | sample (x0: tiny CPU configs — an under-trained ε/v model leaves noise in
    # its samples, an under-trained x0 model gives blurry but clean frames)
    prediction_type: PredictionType = PredictionType.epsilon
    noise_seed: int = 0                  # per-step noise = f(noise_seed, global_step, rank): resume is exact
    gradient_checkpointing: bool = False
    lambda_diffusion: float = 1.0
    # ---- weights and learning rate over time ----------------------------------------------------------------
    # EMA of the weights, θ_ema ← d·θ_ema + (1 − d)·θ (Lightning's EMAWeightAveraging; 0 = off). When on, the
    # checkpoints' state_dict and the end-of-training evaluation hold the EMA weights (the raw ones stay in
    # `current_model_state` for resume).
    ema_decay: float = 0.0
    # diffusers.optimization.get_scheduler (name, num_warmup_steps): stepped per optimizer step, decaying over
    # trainer.max_steps; constant without warmup (the default) builds no scheduler
    scheduler: Optional[DiffusersSchedulerConfig] = field(default_factory=lambda: DiffusersSchedulerConfig())
    # ---- classifier-free guidance: per-condition dropout at training, guidance at sampling -------------------
    drop_reference_prob: float = 0.1
    drop_motion_prob: float = 0.1
    guidance_scale: float = 2.0
    guidance_uncond: list[str] = field(default_factory=lambda: ["reference", "motion"])  # dropped in the uncond pass
    # ---- sampling -------------------------------------------------------------------------------------------
    sampler: Sampler = Sampler.ddim          # ddim | dpmpp (DPM-Solver++ multistep)
    # leading (SD-1.5's default: with few steps the first step is t = 1000 - 1000/steps + 1, never the pure-noise end)
    # | trailing (Lin et al. 2023, Table 2: the first step is t = 999, right for few-step sampling) | linspace
    # | ldm_uniform (the LDM DDIM sampler's "uniform": range(0, 1000, 1000 // steps) + 1, 31 timesteps for 30 steps)
    timestep_spacing: TimestepSpacing = TimestepSpacing.leading
    num_inference_steps: int = 25
    sample_seed: int = 0
    window_size: int = 16                # frames per denoising window (long videos)
    window_overlap: int = 4              # frames shared by consecutive windows, blended linearly
    # blend (linear ramps over fixed windows) | circular (official X-Portrait: random offset per step, windows wrap
    # around the clip, ε averaged) | uniform (official X-NeMo: AnimateDiff's ``uniform`` context scheduler, windows
    # at 0, stride, … < clip length, shifted by a random offset per step modulo the clip, ε averaged)
    window_schedule: WindowSchedule = WindowSchedule.blend
    # circular: the offset is drawn from [0, window_offset_range) each step; 0 = [0, clip length) (official
    # X-Portrait); 24 = random.randint(0, 23) (official X-NeMo)
    window_offset_range: int = 0
    # x_T: noise (N(0, I)) | noised_reference (official X-Portrait: q(z_T | z_ref) at t = T−1, the source latent
    # noised with the sampling noise)
    initial_latent: InitialLatent = InitialLatent.noise
    # sampling-time reference latent: mean (of the VAE posterior, one per clip) | sample_per_frame (official
    # X-Portrait: one posterior sample of the source per frame, each frame reads its own in the reference attention)
    reference_latent: ReferenceLatent = ReferenceLatent.mean
