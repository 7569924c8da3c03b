"""Import the released X-Portrait checkpoint (bytedance/X-Portrait ``model_state-*.th``) as ``model=xportrait_official``.

``python -m lit_models.xportrait.import_official model_state-415001.th --out xportrait.ckpt`` writes a portraitlab
checkpoint (``hyper_parameters.model`` = the composed ``model=xportrait_official`` config, ``state_dict``) that
``lit_models.registry.load_model`` (so ``evaluate``, ``animate``, ``eval.compare`` with ``ckpt=``) rebuilds.

The official file is one LDM state dict (``ControlLDMReferenceOnly_Temporal_Pose_Local``). Names are mapped by
diffusers' own converters (``diffusers.loaders.single_file_utils``), run on index-tagged stand-in tensors so every
source key's destination is known:

* ``model.diffusion_model.`` (base U-Net) → ``denoiser.`` via ``convert_ldm_unet_checkpoint``;
* ``model.diffusion_model.{input,output}_blocks_motion_module.`` → ``denoiser.`` via
  ``convert_animatediff_checkpoint_to_diffusers`` plus the block index (i → ``down_blocks.{i // L}``,
  j → ``up_blocks.{j // (L + 1)}``);
* ``appearance_control_model.`` → ``reference_net.`` via ``convert_ldm_unet_checkpoint``;
* ``pose_control_model.`` / ``local_pose_control_model.`` → ``global_control.`` / ``local_control.`` via
  ``convert_controlnet_checkpoint``;
* ``first_stage_model.`` → ``codec.vae.`` via ``convert_ldm_vae_checkpoint`` (1×1 conv → linear);
* ``cond_stage_model.transformer.`` → ``convert_ldm_clip_checkpoint`` → ``CLIPTextModel``, run once:
  ``null_context`` = CLIP-L("") (the official text condition of both guidance branches);
* DDPM buffers (``betas``, ``alphas_cumprod``, …) → checked against our scheduler's schedule.

Every source key is either written, or checked and reported (``pos_encoder.pe``: the fixed sinusoid, one copy per
diffusers block; DDPM buffers; ``position_ids``), or dropped with a reason (the appearance net's unused
``input_hint_block``); any other key is an error. Every model key is either written or reported (the reference
net's ``conv_norm_out`` / ``conv_out``, absent from the official appearance net and unused: zeros). fp16 and fp32
sources are cast to the model's dtype; the source's sha256 is recorded in the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import torch

from toolbox.io import sha256_file

UNET = "model.diffusion_model."
APPEARANCE = "appearance_control_model."
POSE = "pose_control_model."
LOCAL = "local_pose_control_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer."
DDPM_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                "posterior_mean_coef1", "posterior_mean_coef2", "logvar")
FAMILIES = ("unet", "motion", "appearance", "pose", "local", "vae", "clip", "ddpm")
# CLIP-L tokens of "" as FrozenCLIPEmbedder pads them (max_length 77, pad = <|endoftext|>)
CLIP_BOS, CLIP_EOS, CLIP_LEN = 49406, 49407, 77


class OfficialImportError(ValueError):
    """The source does not fit the model (names the keys)."""


def family(key: str) -> Optional[str]:
    if key.startswith(UNET):
        return "motion" if "_motion_module." in key else "unet"
    for prefix, name in ((APPEARANCE, "appearance"), (POSE, "pose"), (LOCAL, "local"), (VAE, "vae"),
                         (CLIP, "clip")):
        if key.startswith(prefix):
            return name
    if key in DDPM_BUFFERS:
        return "ddpm"
    return None




def load_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The official load: ``sd = torch.load(path); sd = sd.get("state_dict", sd)`` (here ``weights_only=True``)."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise OfficialImportError(f"{path}: not a state dict of tensors")
    return sd


def _tag(shape, i: int) -> torch.Tensor:
    return torch.full((1,) * len(shape), float(i), dtype=torch.float64).expand(*shape)


def rename_with(converter: Callable, shapes: dict[str, tuple], **kwargs) -> dict[str, str]:
    """{source key: converted key} by running ``converter`` on index-tagged stand-ins of the given shapes
    (memory-free expanded tensors), so the converter's own rules decide every name."""
    names = list(shapes)
    out = converter({k: _tag(shapes[k], i) for i, k in enumerate(names)}, **kwargs)
    mapping: dict[str, str] = {}
    for dst, v in out.items():
        if v is None:
            continue
        src = names[int(v.reshape(-1)[0])]
        if src in mapping:
            raise OfficialImportError(f"{src} converted twice ({mapping[src]}, {dst})")
        mapping[src] = dst
    return mapping


def _motion_rename(key: str, layers: int) -> str:
    """AnimateDiff→diffusers names (diffusers' converter) plus the block index of the original U-Net:
    ``input_blocks_motion_module.i.0`` → ``down_blocks.{i // L}.motion_modules.{i % L}``,
    ``output_blocks_motion_module.j.0`` → ``up_blocks.{j // (L+1)}.motion_modules.{j % (L+1)}``."""
    m = re.match(r"(input|output)_blocks_motion_module\.(\d+)\.0\.(.*)$", key)
    if m is None:
        raise OfficialImportError(f"unexpected motion-module key {key!r}")
    kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
    n = layers if kind == "input" else layers + 1
    block = "down_blocks" if kind == "input" else "up_blocks"
    return f"{block}.{i // n}.motion_modules.{i % n}.{rest}"


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """The temporal PE both codes use (interleaved sin/cos, AnimateDiff's ``PositionalEncoding``), 1×length×dim."""
    pos = torch.arange(length).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


def clip_null_context(clip_sd: dict[str, torch.Tensor], dtype=torch.float32) -> torch.Tensor:
    """CLIP-L/14 text encoder (``last_hidden_state``, FrozenCLIPEmbedder layer "last") of "" → 1×77×768."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    sd = convert_ldm_clip_checkpoint({CLIP + k: v for k, v in clip_sd.items()})
    sd.pop("text_model.embeddings.position_ids", None)     # a persistent buffer only under transformers < 4.31
    tok = sd["text_model.embeddings.token_embedding.weight"]
    width = tok.shape[1]
    layers = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")})
    cfg = CLIPTextConfig(vocab_size=tok.shape[0], hidden_size=width,
                         intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                         num_hidden_layers=layers, num_attention_heads=width // 64, max_position_embeddings=CLIP_LEN,
                         hidden_act="quick_gelu", projection_dim=width)
    meta = any(v.is_meta for v in sd.values())
    with torch.device("meta" if meta else "cpu"):
        model = CLIPTextModel(cfg)
    if not any(k.startswith("text_model.") for k in model.state_dict()):     # transformers >= 5 drops the prefix
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise OfficialImportError(f"CLIP text encoder: missing {missing[:4]}, unexpected {unexpected[:4]}")
    ids = torch.full((1, CLIP_LEN), CLIP_EOS, dtype=torch.long, device="meta" if meta else "cpu")
    ids[0, 0] = CLIP_BOS
    with torch.no_grad():
        return model.eval()(input_ids=ids).last_hidden_state.to(dtype)


def check_schedule(ddpm: dict[str, torch.Tensor], cfg) -> dict[str, float]:
    """The official DDPM buffers against our training schedule (diffusers ``scaled_linear`` = LDM ``linear``)."""
    from lit_models.diffusion.sampling import make_train_scheduler

    sched = make_train_scheduler(cfg)
    ours = {"betas": sched.betas, "alphas_cumprod": sched.alphas_cumprod}
    diffs = {}
    for name, ref in ours.items():
        if name in ddpm and not ddpm[name].is_meta:
            d = float((ddpm[name].double() - ref.double()).abs().max())
            if d > 1e-6:
                raise OfficialImportError(f"official {name} differs from ours by {d:.2e}: set beta_schedule/beta_start/"
                                   f"beta_end/num_train_timesteps to the checkpoint's schedule")
            diffs[name] = d
    return diffs


def convert(sd: dict[str, torch.Tensor], model_cfg, target: dict[str, torch.Size],
            null_context: Optional[torch.Tensor] = None, allow_missing: tuple[str, ...] = (),
            dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict]:
    """Official state dict → our model's state dict. ``target``: our model's key → shape (a meta build is enough).
    ``null_context`` overrides CLIP("") (the reduced fixture has no CLIP); ``allow_missing`` names families that may
    be absent (their model keys keep the init — listed in the report). Returns (state dict, report)."""
    from diffusers.loaders.single_file_utils import (convert_animatediff_checkpoint_to_diffusers,
                                                     convert_controlnet_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    L = int(model_cfg.unet.layers_per_block)
    groups: dict[str, dict[str, torch.Tensor]] = {f: {} for f in FAMILIES}
    unknown = []
    for k, v in sd.items():
        f = family(k)
        (unknown.append(k) if f is None else groups[f].__setitem__(k, v))
    if unknown:
        raise OfficialImportError(f"{len(unknown)} keys of no known family, e.g. {unknown[:4]}")
    absent = [f for f in FAMILIES if not groups[f] and f not in allow_missing and not (f == "clip" and null_context is not None)]
    if absent:
        raise OfficialImportError(f"the source has no {absent} keys (allow_missing={list(allow_missing)})")

    plan: dict[str, str] = {}           # source key -> our key
    checked: dict[str, str] = {}        # source key -> what was checked / why dropped
    shapes = lambda g, strip="", add="": {add + k[len(strip):]: tuple(v.shape) for k, v in g.items()}  # noqa: E731

    def add(mapping: dict[str, str], src_of: Callable[[str], str], prefix: str):
        for s, d in mapping.items():
            plan[src_of(s)] = prefix + d

    unet_cfg = {"layers_per_block": L}
    if groups["unet"]:
        add(rename_with(convert_ldm_unet_checkpoint, shapes(groups["unet"]), config=unet_cfg), lambda s: s, "denoiser.")
    if groups["appearance"]:
        app = {k: v for k, v in groups["appearance"].items() if ".input_hint_block." not in k}
        for k in groups["appearance"].keys() - app.keys():
            checked[k] = "dropped: the appearance net's input_hint_block is never called (hint=None)"
        add(rename_with(convert_ldm_unet_checkpoint, shapes(app, APPEARANCE, UNET), config=unet_cfg),
            lambda s: APPEARANCE + s[len(UNET):], "reference_net.")
    for fam, prefix, ours in (("pose", POSE, "global_control."), ("local", LOCAL, "local_control.")):
        if groups[fam]:
            add(rename_with(convert_controlnet_checkpoint, shapes(groups[fam], prefix), config=unet_cfg),
                lambda s, p=prefix: p + s, ours)
    if groups["vae"]:
        vae_cfg = dict(model_cfg.vae_config)
        add(rename_with(convert_ldm_vae_checkpoint, shapes(groups["vae"]), config=vae_cfg), lambda s: s, "codec.vae.")
    pe_values: dict[str, torch.Tensor] = {}
    if groups["motion"]:
        motion = {k: v for k, v in groups["motion"].items() if not k.endswith(".pos_encoder.pe")}
        renamed = rename_with(convert_animatediff_checkpoint_to_diffusers, shapes(motion, UNET))
        add({s: _motion_rename(d, L) for s, d in renamed.items()}, lambda s: UNET + s, "denoiser.")
        for k in groups["motion"].keys() - motion.keys():
            dst = "denoiser." + _motion_rename(k[len(UNET):].replace(".temporal_transformer", "")
                                               .split(".attention_blocks.")[0] + ".pos_embed.pe", L)
            v = groups["motion"][k]
            if not v.is_meta:
                d = float((v.float() - sinusoid(v.shape[1], v.shape[2])).abs().max())
                if d > 1e-5:
                    raise OfficialImportError(f"{k}: not the sinusoidal PE (max abs diff {d:.2e})")
            pe_values[dst] = v
            checked[k] = f"checked: the fixed sinusoid; written once per diffusers block as {dst}"
    if groups["ddpm"]:
        diffs = check_schedule(groups["ddpm"], model_cfg)
        for k in groups["ddpm"]:
            checked[k] = ("checked against our schedule (max abs diff %.1e)" % diffs[k]) if k in diffs else \
                "DDPM schedule table: derived from the scheduler config"
    if groups["clip"]:
        ctx = clip_null_context({k[len(CLIP):]: v for k, v in groups["clip"].items()}, dtype)
        for k in groups["clip"]:
            checked[k] = ("ignored: a non-persistent buffer in transformers >= 4.31" if k.endswith("position_ids")
                          else "used: null_context = CLIP-L(\"\")")
        null_context = ctx if null_context is None else null_context

    # ---- both directions --------------------------------------------------------------------------------------
    out: dict[str, torch.Tensor] = {}
    bad = []
    for src, dst in plan.items():
        if dst not in target:
            bad.append(f"{src} -> {dst} (no such model key)")
            continue
        v = sd[src]
        if v.numel() != math.prod(target[dst]):
            bad.append(f"{src} {tuple(v.shape)} -> {dst} {tuple(target[dst])}")
            continue
        out[dst] = v.reshape(target[dst]).to(dtype)            # 1×1 conv → linear (VAE attention) is a reshape
    for dst, v in pe_values.items():
        if dst not in target:
            bad.append(f"pe -> {dst} (no such model key)")
        elif dst not in out:
            out[dst] = v.reshape(target[dst]).to(dtype)
    if bad:
        raise OfficialImportError(f"{len(bad)} keys do not fit the model, e.g. {bad[:4]}")
    if len(set(plan.values())) != len(plan):
        dup = [d for d, n in Counter(plan.values()).items() if n > 1]
        raise OfficialImportError(f"several source keys map to {dup[:4]}")
    filled_by_rule = {}
    if null_context is not None and "null_context" in target:
        if tuple(null_context.shape) != tuple(target["null_context"]):
            raise OfficialImportError(f"null context {tuple(null_context.shape)} but the model's is "
                               f"{tuple(target['null_context'])} (num_context_tokens, cross_attention_dim)")
        out["null_context"] = null_context.to(dtype)
        filled_by_rule["null_context"] = "CLIP-L(\"\")" if groups["clip"] else "given"
    if groups["vae"] and "codec.vae_weights_loaded" in target:
        out["codec.vae_weights_loaded"] = torch.ones((), dtype=torch.uint8)
        filled_by_rule["codec.vae_weights_loaded"] = "1: the VAE came from the checkpoint"
    if groups["appearance"]:
        for k in target:
            if k.startswith(("reference_net.conv_norm_out.", "reference_net.conv_out.")) and k not in out:
                out[k] = torch.zeros(target[k], dtype=dtype, device="meta" if sd_is_meta(sd) else "cpu")
                filled_by_rule[k] = "zeros: the official appearance net has no output layer (its output is unused)"
    not_filled = sorted(k for k in target if k not in out)
    allowed_prefix = {"vae": ("codec.",), "clip": ("null_context",), "local": ("local_control.",),
                      "pose": ("global_control.",), "appearance": ("reference_net.",), "unet": ("denoiser.",),
                      "motion": ("denoiser.",), "ddpm": ()}
    excused = tuple(p for f in allow_missing for p in allowed_prefix.get(f, ()))
    unexplained = [k for k in not_filled if not k.startswith(excused)]
    if unexplained:
        raise OfficialImportError(f"{len(unexplained)} model keys get no value, e.g. {unexplained[:4]}")
    consumed = set(plan) | set(checked)
    leftover = sorted(set(sd) - consumed)
    if leftover:
        raise OfficialImportError(f"{len(leftover)} source keys neither converted nor checked, e.g. {leftover[:4]}")
    per_family = {}
    for f in FAMILIES:
        keys = groups[f]
        per_family[f] = {"source_keys": len(keys), "converted": sum(k in plan for k in keys),
                         "checked_or_dropped": sum(k in checked for k in keys),
                         "source_dtypes": dict(Counter(str(v.dtype).replace("torch.", "") for v in keys.values()))}
    report = {
        "source_keys": len(sd), "converted": len(plan), "checked_or_dropped": len(checked),
        "model_keys": len(target), "model_keys_written": len(out), "model_keys_kept_at_init": not_filled,
        "filled_by_rule": filled_by_rule, "per_family": per_family,
        "dropped": {k: v for k, v in checked.items() if v.startswith("dropped")},
        "missing_families": [f for f in FAMILIES if not groups[f]],
        "dtype": str(dtype).replace("torch.", ""),
        "renamed": dict(plan),
    }
    return out, report


def sd_is_meta(sd: dict[str, torch.Tensor]) -> bool:
    return any(v.is_meta for v in sd.values())


def model_config(overrides: tuple[str, ...] = (), model: str = "xportrait_official",
                 sampling: Optional[str] = "xportrait_official"):
    """The composed model config: the ``model`` and ``sampling`` groups of the repo's Hydra configs
    (experiments/configs, read as files: ``lit_models`` does not import ``experiments``) and ``model.key=value``
    overrides; the run-level ``seed`` the model configs interpolate is 0."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from lit_models.registry import discover

    config_dir = Path(__file__).resolve().parents[2] / "experiments" / "configs"
    if not (config_dir / "model" / f"{model}.yaml").exists():
        raise FileNotFoundError(f"no model config {config_dir / 'model' / (model + '.yaml')}")
    cs = ConfigStore.instance()
    for name, schema in discover().items():
        cs.store(group="model", name=f"{name}_schema", node=schema)
    groups = [f"+model={model}"] + ([f"+sampling={sampling}"] if sampling else [])
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=None, overrides=[*groups, "+seed=0", *overrides]).model


def meta_state_shapes(model_cfg) -> dict[str, torch.Size]:
    """Our model's state-dict key → shape, built on the meta device (no memory, no weights)."""
    from lit_models.registry import build_model

    with torch.device("meta"):
        model = build_model(model_cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def import_checkpoint(src: str | Path, out: str | Path, model: str = "xportrait_official",
                      overrides: tuple[str, ...] = (), allow_missing: tuple[str, ...] = (),
                      null_context: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float32) -> dict:
    from omegaconf import OmegaConf

    from toolbox.io import atomic_write_bytes_with

    cfg = model_config(overrides, model)
    sd = load_official(src)
    state, report = convert(sd, cfg, meta_state_shapes(cfg), null_context=null_context, allow_missing=allow_missing,
                            dtype=dtype)
    if report["model_keys_kept_at_init"]:
        # families the source lacks (allowed by allow_missing): a fresh init (seed 0) on CPU, so the checkpoint loads
        # strictly; the VAE flag stays 0, so such a VAE refuses to run
        from lit_models.registry import build_model

        torch.manual_seed(0)
        init = build_model(cfg).state_dict()
        for k in report["model_keys_kept_at_init"]:
            state[k] = init[k]
    report["source"] = {"path": str(src), "sha256": sha256_file(src), "bytes": Path(src).stat().st_size}
    report["model"] = model
    ckpt = {"state_dict": state,
            "hyper_parameters": {"model": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)},
            "official_import": report}
    atomic_write_bytes_with(out, lambda f: torch.save(ckpt, f))
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="the official model_state-*.th")
    ap.add_argument("--out", required=True, help="portraitlab checkpoint to write (e.g. xportrait.ckpt)")
    ap.add_argument("--model", default="xportrait_official", help="model config (default: xportrait_official)")
    ap.add_argument("--allow-missing", default="", help=f"comma list of families that may be absent: {FAMILIES}")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("overrides", nargs="*", help="model config overrides (model.key=value)")
    args = ap.parse_args(argv)
    allow = tuple(x for x in args.allow_missing.split(",") if x)
    report = import_checkpoint(args.file, args.out, args.model, tuple(args.overrides), allow,
                               dtype=getattr(torch, args.dtype))
    short = {k: report[k] for k in ("source", "source_keys", "converted", "checked_or_dropped", "model_keys",
                                    "model_keys_written", "missing_families")}
    short["per_family"] = {f: {k: v for k, v in d.items()} for f, d in report["per_family"].items()}
    short["model_keys_kept_at_init"] = len(report["model_keys_kept_at_init"])
    short["filled_by_rule"] = len(report["filled_by_rule"])
    print(json.dumps(short, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
