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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.diffusion.config import DiffusionConfig


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
    return video


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


class LatentCodec(nn.Module):
    """``z = E(x)``, ``x = D(z)`` for x in [-1, 1]: frozen ``AutoencoderKL`` (``latent=vae``) or pixel space
    (``latent=pixel``), optionally space-to-depth (``pixel_unshuffle=f``: 3×H×W ↔ 3f²×H/f×W/f, exact and
    weight-free — tiny configs use it to keep attention at 16² tokens on CPU)."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.kind = cfg.latent
        self.scaling = cfg.vae_scaling_factor
        self.unshuffle = int(cfg.pixel_unshuffle)
        self.vae = None
        if self.kind == "vae":
            from diffusers import AutoencoderKL

            path = cfg.vae_path or cfg.pretrained_model_name_or_path
            if not path:
                raise MissingWeightsError("latent=vae needs `vae_path` or `pretrained_model_name_or_path` "
                                          "(an SD-1.5-shaped folder with vae/); tiny configs use latent=pixel")
            sub = "" if cfg.vae_path else "vae"
            self.vae = _from_pretrained(AutoencoderKL, path, sub, cfg.local_files_only, "VAE")
            self.vae.requires_grad_(False).eval()
        elif self.kind != "pixel":
            raise ValueError(f"latent must be pixel | vae, got {self.kind!r}")

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

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        return self.vae.encode(x).latent_dist.mean * self.scaling

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return F.pixel_shuffle(z, self.unshuffle) if self.unshuffle > 1 else z
        return self.vae.decode(z / self.scaling).sample
