"""The text-to-image LDM ImPoster fine-tunes: U-Net ε_θ(z_t, t, c), text encoder c = τ(prompt), VAE (E, D), scheduler.

``backbone=pretrained`` loads a diffusers folder (SD-2.1-base by default) from a local path or the hub and fails
naming the missing component; ``backbone=random_init`` builds a small U-Net, a byte-level tokenizer and a small
CLIP text encoder from config (random weights, for tiny tests only — results are labelled ``random_init``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_models.imposter.config import BackboneKind
from toolbox.choices import as_choice

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass
class Backbone:
    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    vae: nn.Module | None
    scheduler_config: dict
    latent_channels: int
    vae_scale: int             # image size / latent size
    scaling_factor: float


def byte_level_tokenizer(max_length: int):
    """A tokenizer needing no vocabulary files: one token per UTF-8 byte plus CLIP's start/end tokens (no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[_BOS], vocab[_EOS] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{_BOS} $A {_EOS}", special_tokens=[(_BOS, vocab[_BOS]), (_EOS, vocab[_EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=_BOS, eos_token=_EOS, pad_token=_EOS,
                                   model_max_length=max_length)


def _random_init(cfg) -> Backbone:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if cfg.use_vae:
        raise ValueError("backbone=random_init has no trained VAE to use; set model.use_vae=false (pixel space)")
    tokenizer = byte_level_tokenizer(cfg.text.max_length)
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=cfg.text.hidden_size, intermediate_size=cfg.text.intermediate_size,
        num_hidden_layers=cfg.text.num_layers, num_attention_heads=cfg.text.num_heads,
        max_position_embeddings=cfg.text.max_length, bos_token_id=vocab[_BOS], eos_token_id=vocab[_EOS],
        pad_token_id=vocab[_EOS]))
    u = cfg.unet
    unet = UNet2DConditionModel(
        sample_size=cfg.resolution, in_channels=3, out_channels=3, layers_per_block=u.layers_per_block,
        block_out_channels=tuple(u.block_out_channels), attention_head_dim=tuple(u.attention_head_dim),
        norm_num_groups=u.norm_num_groups, use_linear_projection=u.use_linear_projection,
        down_block_types=tuple(u.down_block_types), up_block_types=tuple(u.up_block_types),
        cross_attention_dim=cfg.text.hidden_size)
    sched = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=str(cfg.beta_schedule),
                 beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type=str(cfg.prediction_type))
    return Backbone(unet, text_encoder, tokenizer, None, sched, 3, 1, 1.0)


def _pretrained(cfg) -> Backbone:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = cfg.pretrained_model_name_or_path
    if not path:
        raise ValueError("model.backbone=pretrained needs model.pretrained_model_name_or_path (a diffusers folder "
                         "such as a local copy of stabilityai/stable-diffusion-2-1-base, or its hub id)")
    kw = dict(revision=cfg.revision, local_files_only=cfg.local_files_only)
    parts = {"unet": (UNet2DConditionModel, "from_pretrained"), "vae": (AutoencoderKL, "from_pretrained"),
             "text_encoder": (CLIPTextModel, "from_pretrained"), "tokenizer": (CLIPTokenizer, "from_pretrained"),
             "scheduler": (DDPMScheduler, "from_pretrained")}
    if not cfg.use_vae:
        parts.pop("vae")
    loaded = {}
    for sub, (cls, fn) in parts.items():
        try:
            loaded[sub] = getattr(cls, fn)(path, subfolder=sub, **kw)
        except Exception as err:  # OSError / HF hub errors / missing files all end here
            where = Path(path)
            hint = (f"local folder {where.resolve()} lacks `{sub}/`" if where.exists() else
                    f"`{path}` is not a local folder and could not be fetched from the Hugging Face hub")
            raise FileNotFoundError(
                f"ImPoster backbone: cannot load `{sub}` of {cls.__name__} from `{path}` ({hint}). Download "
                f"stabilityai/stable-diffusion-2-1-base (diffusers layout: unet/ vae/ text_encoder/ tokenizer/ "
                f"scheduler/) and set model.pretrained_model_name_or_path=/path/to/it. Cause: {err}") from err
    vae = loaded.get("vae")
    unet = loaded["unet"]
    if vae is not None:
        ch = vae.config.latent_channels
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        sf = float(vae.config.scaling_factor)
    else:
        ch, scale, sf = unet.config.in_channels, 1, 1.0
    return Backbone(unet, loaded["text_encoder"], loaded["tokenizer"], vae, dict(loaded["scheduler"].config),
                    ch, scale, sf)


def build_backbone(cfg) -> Backbone:
    if as_choice(BackboneKind, cfg.backbone, "model.backbone") == "pretrained":
        return _pretrained(cfg)
    return _random_init(cfg)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sd21_unet_on_meta() -> nn.Module:
    """The SD-2.1-base U-Net built from its config on the meta device (shapes and parameter count, no memory)."""
    from diffusers import UNet2DConditionModel

    from lit_models.imposter.config import SD21_BASE_UNET

    with torch.device("meta"):
        return UNet2DConditionModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in SD21_BASE_UNET.items()})
