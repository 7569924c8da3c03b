"""Network builders of the diffusion core: every network is a diffusers model built from config or loaded from disk.

* :func:`build_unet2d` — the spatial denoiser ``ε_θ`` (``UNet2DConditionModel``): SD-1.5 weights from
  ``pretrained_model_name_or_path`` or random init from ``cfg.unet`` (``from_config``).
* :func:`build_video_unet` — ``ε_θ`` with AnimateDiff temporal attention (``UNetMotionModel.from_unet2d``), the
  motion modules' output projections zero-initialised so the video U-Net equals the image U-Net at step 0.
* :func:`build_reference_net` — the ReferenceNet: a copy of the spatial U-Net run on the clean reference latent.
* :func:`build_controlnet` — a ``ControlNetModel`` branch on an image condition (X-Portrait's motion control).
* :class:`LatentCodec` — ``z = E(x)``: pixel space (identity, tiny configs) or ``AutoencoderKL`` latents.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.diffusion.config import DiffusionConfig, Latent, NormStats, UpPlacement, VAEType
from toolbox.choices import as_choice


class MissingWeightsError(FileNotFoundError):
    """Raised when a config names pretrained weights that are not on disk (weights are never replaced silently)."""


def _to_plain(x: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def _weights_hint(path: str, subfolder: str, what: str) -> str:
    return (f"{what}: no weights at {Path(path) / subfolder} (config key `pretrained_model_name_or_path`={path!r}). "
            f"Put a Stable-Diffusion-1.5-shaped checkpoint there (folders unet/ and vae/ with config.json and "
            f"diffusion_pytorch_model.safetensors, e.g. `huggingface-cli download stable-diffusion-v1-5/"
            f"stable-diffusion-v1-5 --include 'unet/*' 'vae/*' --local-dir {path}`), or set "
            f"`local_files_only=false` with a hub id, or `pretrained_model_name_or_path=null` for random init.")


def _from_pretrained(cls, path: str, subfolder: str, local_files_only: bool, what: str):
    local = Path(path)
    if local.exists():
        if not (local / subfolder / "config.json").exists():
            raise MissingWeightsError(_weights_hint(path, subfolder, what))
    elif local_files_only:
        raise MissingWeightsError(_weights_hint(path, subfolder, what))
    try:
        return cls.from_pretrained(path, subfolder=subfolder, local_files_only=local_files_only)
    except (OSError, EnvironmentError) as err:
        raise MissingWeightsError(_weights_hint(path, subfolder, what) + f" ({err})") from err


def unet_kwargs(cfg: DiffusionConfig) -> dict:
    kw = dict(_to_plain(cfg.unet))
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        kw[key] = tuple(kw[key])
    return kw


def build_unet2d(cfg: DiffusionConfig):
    """The spatial U-Net ``ε_θ``: pretrained SD-1.5 weights when configured, else ``from_config(cfg.unet)``."""
    from diffusers import UNet2DConditionModel

    if cfg.pretrained_model_name_or_path:
        return _from_pretrained(UNet2DConditionModel, cfg.pretrained_model_name_or_path, "unet",
                                cfg.local_files_only, "denoising U-Net")
    return UNet2DConditionModel.from_config(unet_kwargs(cfg))


def zero_init_temporal(video_unet: nn.Module) -> int:
    """Zero the output projection of every AnimateDiff motion module; returns how many were zeroed."""
    n = 0
    for name, module in video_unet.named_modules():
        if name.split(".")[-2:-1] == ["motion_modules"] and hasattr(module, "proj_out"):
            nn.init.zeros_(module.proj_out.weight)
            nn.init.zeros_(module.proj_out.bias)
            n += 1
    return n


def build_video_unet(cfg: DiffusionConfig, unet2d: nn.Module):
    """``UNetMotionModel`` from the spatial U-Net (weights copied), temporal attention zero-initialised."""
    from diffusers import MotionAdapter, UNetMotionModel

    t = cfg.temporal
    n_blocks = len(unet2d.config.block_out_channels)
    adapter = MotionAdapter(block_out_channels=tuple(unet2d.config.block_out_channels),
                            motion_layers_per_block=unet2d.config.layers_per_block,
                            motion_num_attention_heads=t.num_attention_heads,
                            motion_norm_num_groups=unet2d.config.norm_num_groups,
                            motion_max_seq_length=t.max_seq_length, use_motion_mid_block=t.use_mid_block)
    assert len(adapter.down_blocks) == n_blocks
    video = UNetMotionModel.from_unet2d(unet2d, motion_adapter=adapter)
    if t.zero_init:
        zero_init_temporal(video)
    place_up_motion_modules(video, getattr(t, "up_placement", "before_upsample"))
    set_motion_norm_stats(video, getattr(t, "norm_stats", "per_clip"))
    return video


def _motion_module_forward_per_frame(self, hidden_states, encoder_hidden_states=None, timestep=None,
                                     class_labels=None, num_frames: int = 1, cross_attention_kwargs=None):
    """``AnimateDiffTransformer3D`` with the original AnimateDiff v1 normalisation: ``GroupNorm`` of each frame
    (the (b·f)×C×H×W tensor) instead of over a clip's frames together; everything else as diffusers."""
    batch_frames, channel, height, width = hidden_states.shape
    batch_size = batch_frames // num_frames
    residual = hidden_states
    hidden_states = self.norm(hidden_states)                                   # per frame
    hidden_states = hidden_states.view(batch_size, num_frames, channel, height, width)
    hidden_states = hidden_states.permute(0, 3, 4, 1, 2).reshape(batch_size * height * width, num_frames, channel)
    hidden_states = self.proj_in(input=hidden_states)
    for block in self.transformer_blocks:
        hidden_states = block(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                              timestep=timestep, cross_attention_kwargs=cross_attention_kwargs,
                              class_labels=class_labels)
    hidden_states = self.proj_out(input=hidden_states)
    hidden_states = hidden_states.view(batch_size, height, width, num_frames, channel).permute(0, 3, 4, 1, 2)
    return hidden_states.reshape(batch_frames, channel, height, width) + residual


def set_motion_norm_stats(video_unet: nn.Module, norm_stats: str) -> None:
    """``temporal.norm_stats``: per_clip keeps diffusers' motion modules; per_frame swaps in the original
    normalisation (no weights change)."""
    if as_choice(NormStats, norm_stats, "temporal.norm_stats") == NormStats.per_clip:
        return
    for name, module in video_unet.named_modules():
        if name.split(".")[-2:-1] == ["motion_modules"]:
            module.__class__ = _swapped_class(type(module), "PerFrameNorm", _motion_module_forward_per_frame)


def _up_block_forward_after_upsample(self, hidden_states, res_hidden_states_tuple, temb=None,
                                     encoder_hidden_states=None, upsample_size=None, num_frames: int = 1,
                                     cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None,
                                     **_):
    """An up block of ``UNetMotionModel`` as the original AnimateDiff v1 / X-Portrait U-Net runs it: each LDM
    ``output_blocks[j]`` (resnet [+ spatial transformer] [+ Upsample]) is followed by its motion module, so the last
    motion module sees the up-sampled features."""
    attentions = getattr(self, "attentions", None) or [None] * len(self.resnets)
    last = len(self.resnets) - 1
    for i, (resnet, attn, motion_module) in enumerate(zip(self.resnets, attentions, self.motion_modules)):
        res_hidden_states = res_hidden_states_tuple[-1]
        res_hidden_states_tuple = res_hidden_states_tuple[:-1]
        hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            hidden_states = self._gradient_checkpointing_func(resnet, hidden_states, temb)
        else:
            hidden_states = resnet(input_tensor=hidden_states, temb=temb)
        if attn is not None:
            hidden_states = attn(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                                 encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
        if i == last and self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states=hidden_states, output_size=upsample_size)
        hidden_states = motion_module(hidden_states, num_frames=num_frames)
    return hidden_states


_SWAPPED_CLASSES: dict[tuple[type, str], type] = {}


def _swapped_class(cls: type, suffix: str, forward) -> type:
    """A subclass of a diffusers block with another ``forward`` (a class, not a bound method, so the module
    deep-copies and pickles; ``state_dict`` names are unchanged)."""
    key = (cls, suffix)
    if key not in _SWAPPED_CLASSES:
        _SWAPPED_CLASSES[key] = type(f"{cls.__name__}{suffix}", (cls,), {"forward": forward, "__module__": __name__})
    return _SWAPPED_CLASSES[key]


def place_up_motion_modules(video_unet: nn.Module, placement: str) -> None:
    """``temporal.up_placement``: before_upsample keeps diffusers' up blocks; after_upsample swaps in the original
    placement (no weights change)."""
    if as_choice(UpPlacement, placement, "temporal.up_placement") == UpPlacement.before_upsample:
        return
    for block in video_unet.up_blocks:
        if not hasattr(block, "motion_modules"):
            raise ValueError(f"{type(block).__name__} has no motion modules")
        block.__class__ = _swapped_class(type(block), "AfterUpsample", _up_block_forward_after_upsample)


def build_reference_net(unet2d: nn.Module) -> nn.Module:
    """ReferenceNet: an independent copy of the spatial U-Net (same processor names as the denoiser)."""
    return copy.deepcopy(unet2d)


def build_controlnet(unet2d: nn.Module, conditioning_channels: int = 3,
                     embedding_channels: tuple[int, ...] = (16, 32, 96, 256), copy_weights: bool = True):
    """A ``ControlNetModel`` mirroring the U-Net's encoder; ``embedding_channels`` sets the image→latent downsampling
    (2^(len-1): (16, 32, 96, 256) for 8× VAE latents, (16,) for pixel space). Zero convs make it a no-op at init."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet2d, conditioning_embedding_out_channels=tuple(embedding_channels),
                                     load_weights_from_unet=copy_weights, conditioning_channels=conditioning_channels)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# stabilityai/stable-video-diffusion-img2vid-xt vae/config.json (diffusers AutoencoderKLTemporalDecoder defaults)
SVD_XT_VAE_CONFIG = {"in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512],
                     "down_block_types": ["DownEncoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 4,
                     "sample_size": 768, "scaling_factor": 0.18215, "force_upcast": True}
SVD_XT_VAE_URL = "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt (subfolder vae/)"


def build_temporal_vae(path: Optional[str], local_files_only: bool = True):
    """SVD-xt's ``AutoencoderKLTemporalDecoder`` from ``path`` (a folder with config.json and
    diffusion_pytorch_model.safetensors: the ``vae/`` subfolder of stable-video-diffusion-img2vid-xt; weights
    registry entry ``svd_xt_vae``)."""
    from diffusers import AutoencoderKLTemporalDecoder

    hint = (f"vae_type=temporal_decoder: no AutoencoderKLTemporalDecoder at {path} (config key `vae_path`). Put "
            f"SVD-xt's VAE there (config.json + diffusion_pytorch_model.safetensors from {SVD_XT_VAE_URL}, e.g. "
            f"`huggingface-cli download stabilityai/stable-video-diffusion-img2vid-xt --include 'vae/*' --local-dir "
            f"weights/stable-video-diffusion-img2vid-xt`; weights registry entry svd_xt_vae), or set "
            f"model.vae_type=kl for the SD AutoencoderKL")
    if not path:
        raise MissingWeightsError(hint)
    try:
        return _from_pretrained(AutoencoderKLTemporalDecoder, path, "", local_files_only, "VAE")
    except MissingWeightsError as err:
        raise MissingWeightsError(hint) from err


class LatentCodec(nn.Module):
    """``z = E(x)``, ``x = D(z)`` for x in [-1, 1]: a frozen VAE (``latent=vae``; ``vae_type=kl``: SD's
    ``AutoencoderKL``, frames decoded independently; ``temporal_decoder``: SVD-xt's ``AutoencoderKLTemporalDecoder``,
    whose decoder mixes the frames of a clip — :meth:`decode_clip` decodes chunks of ``vae_decode_chunk`` frames as
    one clip each, official X-NeMo 25) or pixel space (``latent=pixel``), optionally space-to-depth
    (``pixel_unshuffle=f``: 3×H×W ↔ 3f²×H/f×W/f, exact and weight-free — tiny configs use it to keep attention at
    16² tokens on CPU)."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.kind = as_choice(Latent, cfg.latent, "model.latent")
        self.scaling = cfg.vae_scaling_factor
        self.unshuffle = int(cfg.pixel_unshuffle)
        self.vae_type = as_choice(VAEType, getattr(cfg, "vae_type", "kl"), "model.vae_type")
        self.decode_chunk = int(getattr(cfg, "vae_decode_chunk", 25))
        if self.decode_chunk < 1:
            raise ValueError(f"model.vae_decode_chunk must be ≥ 1, got {self.decode_chunk}")
        self.vae = None
        self.from_checkpoint = False
        if self.kind == "vae" and self.vae_type == "temporal_decoder":
            self.vae = build_temporal_vae(cfg.vae_path, cfg.local_files_only)
            self.vae.requires_grad_(False).eval()
        elif self.kind == "vae":
            from diffusers import AutoencoderKL

            path = cfg.vae_path or cfg.pretrained_model_name_or_path
            vae_config = _to_plain(getattr(cfg, "vae_config", None))
            if vae_config and not cfg.vae_path:
                # weights come with a checkpoint (e.g. an official importer's output): a flag buffer, set to 1 by the
                # importer, tells loaded weights from a random init
                self.vae = AutoencoderKL.from_config(dict(vae_config))
                self.from_checkpoint = True
                self.register_buffer("vae_weights_loaded", torch.zeros((), dtype=torch.uint8))
            elif not path:
                raise MissingWeightsError("latent=vae needs `vae_path` or `pretrained_model_name_or_path` "
                                          "(an SD-1.5-shaped folder with vae/), or `vae_config` with weights from a "
                                          "checkpoint; tiny configs use latent=pixel")
            else:
                sub = "" if cfg.vae_path else "vae"
                self.vae = _from_pretrained(AutoencoderKL, path, sub, cfg.local_files_only, "VAE")
            self.vae.requires_grad_(False).eval()

    @property
    def factor(self) -> int:
        """Pixel → latent downsampling."""
        return self.unshuffle if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        return 3 * self.unshuffle**2 if self.vae is None else int(self.vae.config.latent_channels)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    def _check_weights(self) -> None:
        if self.from_checkpoint and not int(self.vae_weights_loaded):
            raise MissingWeightsError("latent=vae with `vae_config`: the VAE weights come from a checkpoint and none "
                                      "was loaded (e.g. `python -m lit_models.xportrait.import_official "
                                      "model_state-*.th --out xportrait.ckpt`, then ckpt=xportrait.ckpt)")

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_weights()
        if self.vae is None:
            return F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        return self.vae.encode(x).latent_dist.mean * self.scaling

    @torch.no_grad()
    def sample(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A posterior sample ``z ~ q(z | x)`` (``latent_dist.sample()``; LDM's ``encode_first_stage().sample()``);
        the pixel codec is deterministic, so its sample is its encoding."""
        if self.vae is None:
            return self.encode(x)
        self._check_weights()
        dist = self.vae.encode(x).latent_dist
        eps = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device, dist.mean.dtype)
        return (dist.mean + dist.std * eps) * self.scaling

    def decode(self, z: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """N×C×h×w → N×3×H×W; the temporal decoder reads the N rows as clips of ``num_frames`` frames (1: each row
        on its own)."""
        self._check_weights()
        if self.vae is None:
            return F.pixel_shuffle(z, self.unshuffle) if self.unshuffle > 1 else z
        if self.vae_type == "temporal_decoder":
            return self.vae.decode(z / self.scaling, num_frames=num_frames).sample
        return self.vae.decode(z / self.scaling).sample

    def decode_clip(self, z: torch.Tensor) -> torch.Tensor:
        """B×T×C×h×w → B×T×3×H×W, ``vae_decode_chunk`` frames at a time (bounded memory for any T); each chunk is
        one temporal clip for the temporal decoder (official X-NeMo ``decode_latents_svd``), frames independent for
        the KL VAE and pixel space."""
        B, T = z.shape[:2]
        out = []
        for b in range(B):
            parts = [self.decode(z[b, s:s + self.decode_chunk], num_frames=len(z[b, s:s + self.decode_chunk]))
                     for s in range(0, T, self.decode_chunk)]
            out.append(torch.cat(parts))
        return torch.stack(out)
