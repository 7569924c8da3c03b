"""X-NeMo: a 1-D latent motion descriptor that enters the denoiser only through cross-attention.

Official layout (``motion_injection=motion_xattn``, the default; ``fixtures/official/xnemo/structure.md``):

* ``m_t = E_m(D_t, b_t)`` ∈ R^{L×d} per driving frame (FAN_SA encoder, L·d = ``motion_dim`` = 32 × 16 official);
* ``ε_θ(z_t, t | h_ref, c_img, m)``: in every down / mid / up layer of the video U-Net,
  ``resnet → spatial transformer (attn1 = self + reference tokens h_ref, attn2 = cross to c_img) → motion
  cross-attention (queries: the frame's pixels, keys/values: m_t, width d) → AnimateDiff temporal attention``;
* ``c_img`` = the CLIP image embedding of the reference (one token); ``h_ref`` from the ReferenceNet run once on the
  clean reference latent at t = 0 (shared core);
* guidance: ``ε̂ = ε(∅) + s (ε(c) − ε(∅))`` where ∅ = no reference tokens, ``c_img = 0`` and the motion tokens of the
  **reference image itself**, ``E_m(S)`` (``guidance_negative_motion=reference``).

``motion_injection=text_xattn`` (the motion tokens, projected, replace the U-Net's text context; learned null tokens
for guidance) is kept for its checkpoints and lives in ``legacy.py``. Identity-leakage guards in both: driving
appearance augmentation, random reference-feature masking, temporal low-pass of ``m``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.diffusion.augment import appearance_augment
from lit_models.diffusion.module import MotionState, ReferenceVideoDiffusion
from lit_models.diffusion.networks import MissingWeightsError
from lit_models.xnemo.config import (IMAGE_ENCODERS, INIT_LATENTS, MOTION_ENCODERS, MOTION_INJECTIONS,
                                     NEGATIVE_MOTIONS)
from lit_models.xnemo.fan import sincos_1d
from lit_models.xnemo.legacy import OFFICIAL_LAYOUT_KEYS as _NEW_KEYS  # noqa: F401  (name kept for importers)
from lit_models.xnemo.legacy import LegacyTextXattn, upgrade_legacy_config
from lit_models.xnemo.motion_encoder import MotionEncoder, temporal_lowpass

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_URL = "https://huggingface.co/lambdalabs/sd-image-variations-diffusers (folder image_encoder/)"


def clip_pixels(images01: torch.Tensor) -> torch.Tensor:
    """The official X-NeMo CLIP input (``Pose2VideoPipeline.__call__``: ``ref_image.resize((224, 224))`` of the
    reference's PIL image — bicubic — then ``CLIPImageProcessor()``: ×1/255 and CLIP mean/std): B×3×H×W in [0, 1]
    (uint8 levels, as from the 512² reference crop) → B×3×224×224 float32 on the input's device."""
    import numpy as np
    from PIL import Image

    u8 = (images01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    mean, std = np.array(CLIP_MEAN), np.array(CLIP_STD)
    out = [(np.asarray(Image.fromarray(im).resize((224, 224), Image.BICUBIC), dtype=np.float64) / 255 - mean) / std
           for im in u8]
    return torch.from_numpy(np.stack(out).astype(np.float32)).permute(0, 3, 1, 2).contiguous().to(images01.device)


def _check(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"model.{name} must be one of {list(allowed)}, got {value!r}")


def build_image_encoder(kind: str, path: Optional[str], dim: int) -> nn.Module:
    """The reference image encoder for the U-Net's cross-attention context (``image_encoder``)."""
    if kind == "learned_cnn":
        return nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                             nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, dim))
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if kind == "clip_standin":
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                                             num_hidden_layers=24, num_attention_heads=16,
                                                             image_size=224, patch_size=14, projection_dim=dim))
    else:
        if not path or not (Path(path) / "config.json").is_file():
            raise MissingWeightsError(
                f"image_encoder=clip: no CLIPVisionModelWithProjection at {path} (config key `model.image_encoder_path`). "
                f"Put sd-image-variations' image encoder there (config.json + model.safetensors; {CLIP_URL}, e.g. "
                f"`huggingface-cli download lambdalabs/sd-image-variations-diffusers --include 'image_encoder/*' "
                f"--local-dir weights/sd-image-variations-diffusers`), or set model.image_encoder=clip_standin "
                f"(random ViT-L/14, numbers labelled STANDIN)")
        enc = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
    if int(enc.config.projection_dim) != dim:
        raise ValueError(f"image encoder projection_dim {enc.config.projection_dim} != the U-Net's cross_attention_dim "
                         f"{dim} (model.unet.cross_attention_dim)")
    return enc.requires_grad_(False).eval()


class XNeMo(ReferenceVideoDiffusion):
    # the official script (configs/prompts/animation.yaml weight_dtype: fp16) samples in fp16 on CUDA; ours runs
    # fp16 as autocast (fp32 weights, fp16 matmuls / convolutions), not as fp16 weights
    official_precision = "fp16"
    # experiments.animate preprocess=auto: datamodules.preprocess.xnemo (BlazeFace boxes, 512² reference crop, 224²
    # motion crops, the reference's own crop as the guidance negative, its CLIP input)
    official_preprocess = "xnemo"

    def __init__(self, cfg):
        super().__init__(upgrade_legacy_config(cfg))
        self.motion_context = None
        self._keep_reference_rows: Optional[torch.Tensor] = None
        if self.cfg.motion_injection == "motion_xattn":
            from lit_models.diffusion.motion_cross_attention import attach_motion_cross_attention

            if not self.is_video:
                raise ValueError("model.motion_injection=motion_xattn needs model.temporal.use_temporal=true "
                                 "(each motion module runs before the temporal module of its layer)")
            self.motion_context = attach_motion_cross_attention(self.denoiser, int(self.cfg.motion_token_dim),
                                                                int(self.cfg.motion_heads))
            self.null_context.requires_grad_(False)     # unused: both U-Nets read c_img (no unused grads under DDP)

    # ---- networks -------------------------------------------------------------------------------------------
    def build_motion(self, unet2d: nn.Module) -> None:
        cfg = self.cfg
        _check("motion_injection", cfg.motion_injection, MOTION_INJECTIONS)
        _check("motion_encoder", cfg.motion_encoder, MOTION_ENCODERS)
        _check("guidance_negative_motion", cfg.guidance_negative_motion, NEGATIVE_MOTIONS)
        _check("init_latents", cfg.init_latents, INIT_LATENTS)
        d, D = int(cfg.motion_token_dim), int(unet2d.config.cross_attention_dim)
        if cfg.motion_dim % d:
            raise ValueError(f"model.motion_dim={cfg.motion_dim} must be a multiple of model.motion_token_dim={d}")
        self.num_motion_tokens = cfg.motion_dim // d
        if cfg.motion_encoder == "fan":
            from lit_models.xnemo.fan import FANMotionEncoder

            self.motion_encoder = FANMotionEncoder(len(cfg.bbox_param), d, cfg.motion_dim)
        else:
            self.motion_encoder = MotionEncoder(cfg.motion_dim, list(cfg.motion_encoder_channels),
                                                cfg.motion_encoder_resolution, cfg.motion_encoder_pool)
            # the fan encoder carries its own table (official ``pe``); the conv encoder gets the same kind
            self.register_buffer("motion_pe", sincos_1d(d, torch.arange(self.num_motion_tokens)).float()[None],
                                 persistent=False)
        self.legacy = LegacyTextXattn(self, d, D) if cfg.motion_injection == "text_xattn" else None
        if self.legacy is not None:
            return
        if cfg.guidance_negative_motion == "null":
            self.null_motion = nn.Parameter(torch.zeros(1, self.num_motion_tokens, d))
        _check("image_encoder", cfg.image_encoder, IMAGE_ENCODERS)
        self.image_encoder = build_image_encoder(cfg.image_encoder, cfg.image_encoder_path, D)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "image_encoder", None) is not None and self.cfg.image_encoder != "learned_cnn":
            self.image_encoder.eval()                       # frozen CLIP: always in eval mode
        return self

    # ---- conditions -----------------------------------------------------------------------------------------
    def motion_tokens_of(self, frames01: torch.Tensor) -> torch.Tensor:
        """N×3×H×W in [0, 1] → m: N×L×d (FAN: resized to 224², [-1, 1], head box ``bbox_param``)."""
        N = frames01.shape[0]
        if self.cfg.motion_encoder == "fan":
            x = frames01 if frames01.shape[-1] == 224 else F.interpolate(
                frames01, size=(224, 224), mode="bilinear", align_corners=False, antialias=frames01.shape[-1] > 224)
            box = torch.tensor(list(self.cfg.bbox_param), dtype=x.dtype, device=x.device).expand(N, -1)
            return self.motion_encoder(x * 2 - 1, box)
        m = self.motion_encoder(frames01)
        return m.view(N, self.num_motion_tokens, -1) + self.motion_pe.to(m.dtype)

    def descriptor(self, driving: torch.Tensor) -> torch.Tensor:
        """B×T×3×H×W in [0, 1] → m: B×T×motion_dim (low-passed over T when the switch is on)."""
        B, T = driving.shape[:2]
        m = self.motion_tokens_of(driving.flatten(0, 1)).reshape(B, T, -1)
        if self.cfg.use_descriptor_lowpass:
            m = temporal_lowpass(m, self.cfg.lowpass_sigma)
        return m

    def image_context(self, source01: torch.Tensor, pixel_values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """c_img: B×1×D, the reference's image embedding (CLIP ``image_embeds`` of :func:`clip_pixels`;
        ``pixel_values``: a CLIP input made by the caller instead)."""
        if self.cfg.image_encoder == "learned_cnn":
            return self.image_encoder(source01 * 2 - 1)[:, None]
        x = clip_pixels(source01) if pixel_values is None else pixel_values
        with torch.no_grad():
            return self.image_encoder(pixel_values=x.to(source01.device, source01.dtype)).image_embeds[:, None]

    def reference_context(self, z_ref: torch.Tensor, source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Official: the ReferenceNet's cross-attention reads the same image embedding c_img as the denoiser
        (``source`` in [0, 1]; when a caller passes only the latent, the image is its decoding)."""
        if self.legacy is not None:
            return self.legacy.reference_context(z_ref, source)
        if source is None:
            source = self.decode(z_ref)
        return self.image_context(source).to(z_ref.dtype)

    def encode_motion(self, source, driving, keep_motion, generator: Optional[torch.Generator] = None,
                      keypoints=None, negative_source: Optional[torch.Tensor] = None,
                      image_embeds: Optional[torch.Tensor] = None) -> MotionState:
        """``driving`` at any size (each motion encoder resizes to its own input); ``negative_source``: the image
        whose motion is the guidance negative (official: the reference's tight face crop; default ``source``);
        ``image_embeds``: c_img B×1×D computed by the caller (default ``image_context(source)``)."""
        B, T = driving.shape[:2]
        m = self.descriptor(driving)                                       # B×T×(L·d)
        if self.legacy is not None:
            return self.legacy.motion_state(m, keep_motion)
        tokens = m.view(B, T, self.num_motion_tokens, -1)
        if not bool(keep_motion.all()):
            if self.cfg.guidance_negative_motion == "reference":
                neg = self.motion_tokens_of(source if negative_source is None else negative_source)  # E_m(S)
            else:
                neg = self.null_motion.expand(B, -1, -1)
            tokens = torch.where(keep_motion.view(B, 1, 1, 1), tokens, neg[:, None].to(tokens.dtype))
        ctx = self.image_context(source) if image_embeds is None else image_embeds
        return {"motion_tokens": tokens, "context": ctx[:, None].expand(B, T, *ctx.shape[1:])}

    def denoise(self, z_t, t, state, ref_index, keep_reference):
        # c_img belongs to the reference condition: zero where the reference is dropped or none was written
        T = z_t.shape[1]
        written = self.bank is not None and bool(self.bank.features)
        keep = keep_reference.repeat_interleave(T) if written else torch.zeros(z_t.shape[0] * T, dtype=torch.bool,
                                                                                 device=z_t.device)
        self._keep_reference_rows = keep
        try:
            return super().denoise(z_t, t, state, ref_index, keep_reference)
        finally:
            self._keep_reference_rows = None

    def condition_denoiser(self, rows: MotionState, z_t, t):
        if self.legacy is not None:
            return self.legacy.condition_denoiser(rows)
        self.motion_context.tokens = rows["motion_tokens"]               # N×L×d, read by every motion module
        ctx = rows["context"]
        keep = self._keep_reference_rows
        if keep is not None and not bool(keep.all()):
            ctx = ctx * keep.view(-1, 1, 1).to(ctx.dtype)
        return ctx, None, None

    def prepare_driving(self, batch, driving, generator):
        if self.cfg.use_driving_augmentation:
            return appearance_augment(driving, generator, self.cfg.augmentation_strength)
        return driving

    def reference_mask_ratio(self) -> float:
        return float(self.cfg.reference_mask_ratio) if self.cfg.use_reference_masking else 0.0

    def initial_latents(self, z_src: torch.Tensor, num_frames: int) -> Optional[torch.Tensor]:
        """``init_latents=blurred_reference`` (official): ``GaussianBlur(z_ref)`` on every frame, which the sampler
        noises to its first timestep; None (pure noise) otherwise."""
        if self.cfg.init_latents == "noise":
            return None
        import torchvision.transforms.v2.functional as TF

        k, sigma = int(self.cfg.init_blur_kernel), float(self.cfg.init_blur_sigma)
        blurred = TF.gaussian_blur(z_src, [k, k], [sigma, sigma])
        return blurred[:, None].expand(-1, num_frames, *blurred.shape[1:]).contiguous()

    @torch.no_grad()
    def animate(self, source: torch.Tensor, driving: torch.Tensor, num_inference_steps: Optional[int] = None,
                sampler: Optional[str] = None, guidance_scale: Optional[float] = None,
                keypoints: Optional[torch.Tensor] = None, show_progress: bool = False,
                generator: Optional[torch.Generator] = None, reference_motion: Optional[torch.Tensor] = None,
                clip_pixels: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                offsets=None) -> torch.Tensor:
        """B×T×3×H×W frames in [0, 1] (H×W: the source's size, as the official pipeline's output is the reference's
        512²) for a driving clip of any length T, sampled in one trajectory by
        :class:`lit_models.xnemo.pipeline.XNeMoPipeline` (the official loop; ``generator``: all noise and window
        offsets, default seeded by ``sample_seed``). ``driving``: the motion crops (any size, official 224²);
        ``reference_motion``: the reference's face crop for the guidance negative (default ``source``);
        ``clip_pixels``: the CLIP input of the reference (``datamodules.preprocess.xnemo.clip_pixels``);
        ``keypoints`` is unused (X-NeMo reads no landmarks)."""
        from lit_models.xnemo.pipeline import XNeMoPipeline

        was_training = self.training
        self.eval()
        try:
            return XNeMoPipeline(self)(source, driving, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, sampler=sampler, generator=generator,
                                       noise=noise, offsets=offsets, reference_motion=reference_motion,
                                       clip_pixels=clip_pixels,
                                       show_progress=show_progress, output_size=tuple(source.shape[-2:]))
        finally:
            self.train(was_training)

    @property
    def standin_output(self) -> bool:
        """True when the output depends on a randomly initialised stand-in network (``image_encoder=clip_standin``
        feeding the motion cross-attention): numbers measured on this model are labelled ``_STANDIN`` (e.g. by the
        motion-sensitivity probe, ``eval.probes.xnemo``)."""
        return self.cfg.motion_injection == "motion_xattn" and self.cfg.image_encoder == "clip_standin"
