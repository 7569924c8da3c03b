"""Model registry: each method folder declares its config schema with ``@model_schema("name")``.

Hydra composes ``model=<yaml>``; the YAML's defaults list names ``<name>_schema`` (registered here into Hydra's
ConfigStore), so a mistyped key fails at compose time and names itself. ``build_model`` instantiates the class
named by the config's ``_target_``; ``load_model`` rebuilds any method from a checkpoint alone.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import is_dataclass
from typing import Any

_SCHEMAS: dict[str, type] = {}


def model_schema(name: str):
    """Class decorator: register a dataclass as the structured schema of ``model`` configs named ``name``."""

    def wrap(cls):
        if not is_dataclass(cls):
            raise TypeError(f"@model_schema({name!r}) needs a dataclass, got {cls!r}")
        if name in _SCHEMAS and _SCHEMAS[name] is not cls:
            raise ValueError(f"model schema {name!r} registered twice ({_SCHEMAS[name]} and {cls})")
        _SCHEMAS[name] = cls
        return cls

    return wrap


def discover() -> dict[str, type]:
    """Import ``lit_models.<pkg>.config`` for every method folder, so each registers its schema."""
    import lit_models

    for info in pkgutil.iter_modules(lit_models.__path__):
        if not info.ispkg:
            continue
        try:
            importlib.import_module(f"lit_models.{info.name}.config")
        except ModuleNotFoundError as err:
            if err.name != f"lit_models.{info.name}.config":
                raise
    return dict(_SCHEMAS)


def resolution_multiple(cfg: Any) -> tuple[int, str]:
    """What ``model.resolution`` must be a multiple of, read from the down-sampling keys the model config declares
    (checked at compose time by ``experiments.runtime.validate``, so a bad size names ``model.resolution`` instead
    of failing inside a convolution): ``(multiple, reason)``; ``(1, "")`` when the config declares none."""
    from fractions import Fraction
    from math import lcm

    get = (lambda k, d=None: cfg.get(k, d)) if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    parts: list[tuple[int, str]] = []
    unet = get("unet")
    if get("latent") is not None or get("use_vae") is not None:     # diffusion methods
        vae = get("latent") == "vae" or bool(get("use_vae"))
        factor = 8 if vae else int(get("pixel_unshuffle", 1) or 1)
        blocks = unet.get("block_out_channels") if hasattr(unet, "get") else getattr(unet, "block_out_channels", None)
        downs = 2 ** (len(blocks) - 1) if blocks else 1
        parts.append((factor * downs, f"{'VAE ×8' if vae else f'pixel_unshuffle ×{factor}'} then "
                                      f"{downs}× down in the U-Net"))
    if get("num_down") is not None:
        parts.append((2 ** int(get("num_down")), f"num_down={get('num_down')}"))
    if get("gen_num_down_blocks") is not None:
        parts.append((2 ** int(get("gen_num_down_blocks")), f"gen_num_down_blocks={get('gen_num_down_blocks')}"))
    for blocks_key, scale_key in (("kp_num_blocks", "kp_scale_factor"), ("dm_num_blocks", "dm_scale_factor")):
        if get(blocks_key) is not None:
            scale = Fraction(str(get(scale_key, 1) or 1))
            need = Fraction(2 ** int(get(blocks_key))) / scale
            parts.append((need.numerator,   # (resolution × scale) divisible by 2^blocks
                          f"{blocks_key}={get(blocks_key)} at {scale_key}={get(scale_key, 1)}"))
    # MRFA (official layout): sizes live in named sub-configs
    def sub(name, key):
        node = get(name)
        if node is None:
            return None
        return node.get(key) if hasattr(node, "get") else getattr(node, key, None)

    if sub("generator", "num_up_blocks") is not None:
        n = int(sub("generator", "num_up_blocks"))
        parts.append((2 ** n, f"generator.num_up_blocks={n}: {n + 1} scales, the coarsest at resolution/2^{n}"))
    if sub("dense_motion", "num_blocks") is not None:
        n, scale = int(sub("dense_motion", "num_blocks")), Fraction(str(sub("dense_motion", "scale_factor") or 1))
        need = Fraction(2 ** n) / scale
        parts.append((need.numerator, f"dense_motion.num_blocks={n} at dense_motion.scale_factor={float(scale)}"))
    if get("prior") == "mtia" and sub("mtia", "patch_size") is not None:
        branches = len(sub("mtia", "stage3_channels") or [0])
        need = 4 * max(int(sub("mtia", "patch_size")), 2 ** max(branches - 1, 0))
        parts.append((need, f"mtia: HRNet at resolution/4 with {branches} branches, patch_size={sub('mtia', 'patch_size')}"))
    if get("corr_scale") is not None:
        inv = 1 / Fraction(str(get("corr_scale")))
        parts.append((int(inv.numerator), f"corr_scale={get('corr_scale')}"))
    parts = [(m, why) for m, why in parts if m > 1]
    if not parts:
        return 1, ""
    multiple = lcm(*[m for m, _ in parts])
    return multiple, "; ".join(why for m, why in parts)


def _import_target(target: str):
    module, _, attr = target.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def build_model(cfg: Any):
    """Build the LightningModule named by ``cfg._target_`` from a model config (DictConfig, dict or dataclass)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(cfg) if not OmegaConf.is_config(cfg) else cfg
    target = cfg.get("_target_")
    if not target:
        raise KeyError("model config has no `_target_` naming its LightningModule class")
    return _import_target(target)(cfg)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects beyond tensors and plain types; loading it would run their code."""


def _safe_globals() -> list:
    """What Lightning checkpoints may hold beyond tensors and plain types (an allow-list, nothing executable)."""
    out: list = []
    try:
        from lightning.fabric.utilities.data import AttributeDict   # hparams container (a plain dict subclass)

        out.append(AttributeDict)
    except ImportError:  # pragma: no cover - older Lightning
        pass
    return out


def load_checkpoint(ckpt_path: str, map_location: str = "cpu") -> dict:
    """``torch.load(..., weights_only=True)``: tensors, plain containers and the allow-list above only. A file that
    would need arbitrary unpickling (code execution) is refused before any of its objects is built."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"{ckpt_path}: refused to load — it holds pickled objects beyond tensors and plain types, and unpickling "
            f"them could run code ({first}). portraitlab checkpoints store hyper-parameters as plain types; load a "
            f"file you trust by hand with torch.load(..., weights_only=False) and re-save its state_dict") from None


CKPT_WEIGHTS = ("auto", "ema", "raw")


def load_model(ckpt_path: str, map_location: str = "cpu", weights: str = "auto"):
    """Rebuild a model from a checkpoint: its hyper-parameters carry the model config and its ``_target_``.
    Loaded with ``weights_only=True`` (``load_checkpoint``): a checkpoint someone else made runs no code.

    ``weights``: ``auto`` = the checkpoint's ``state_dict`` (the EMA weights when it was trained with
    ``model.ema_decay > 0``, Lightning's EMAWeightAveraging; the raw weights otherwise); ``raw`` = the raw training
    weights (EMAWeightAveraging keeps them as ``current_model_state``); ``ema`` = the averaged weights, an error for
    a checkpoint trained without EMA. The model's ``loaded_weights`` says which it got (``ema`` / ``raw``)."""
    if weights not in CKPT_WEIGHTS:
        raise ValueError(f"ckpt_weights={weights!r} is not one of {', '.join(CKPT_WEIGHTS)}")
    ckpt = load_checkpoint(ckpt_path, map_location=map_location)
    hparams = ckpt.get("hyper_parameters", {})
    model_cfg = hparams.get("model")
    if model_cfg is None or "_target_" not in model_cfg:
        raise KeyError(f"{ckpt_path}: checkpoint hyper-parameters hold no `model._target_`; not a portraitlab checkpoint?")
    has_ema = "current_model_state" in ckpt
    if weights == "ema" and not has_ema:
        raise ValueError(f"{ckpt_path}: trained without EMA (model.ema_decay=0), so it holds no averaged weights: "
                         f"ckpt_weights=ema cannot be served (auto / raw load its weights)")
    cls = _import_target(model_cfg["_target_"])
    model = cls(model_cfg)
    model.load_state_dict(ckpt["current_model_state"] if weights == "raw" and has_ema else ckpt["state_dict"])
    model.loaded_weights = "ema" if has_ema and weights != "raw" else "raw"
    model.eval()
    return model
