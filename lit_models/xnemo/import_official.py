"""Import the released X-NeMo weights (github.com/bytedance/x-nemo-inference) into a ``model=xnemo`` checkpoint.

    python -m lit_models.xnemo.import_official DIR --out xnemo.ckpt [--dtype fp32|fp16] [--report report.json]
        [--sampling official|none] [--model-config model.yaml] [key=value ...]

``DIR`` holds the official ``pretrained_weights/`` files (or is that folder):
``xnemo_reference_unet.pth``, ``xnemo_denoising_unet.pth``, ``xnemo_temporal_module.pth``,
``xnemo_motion_encoder.pth`` (Google Drive, linked from the official README). Each is read with
``torch.load(weights_only=True)``; fp16 and fp32 files are both accepted and cast to ``--dtype``; the sha256 of every
source file is recorded in the checkpoint and the report. Every key is accounted for in both directions: each source
key is renamed (:func:`official_to_ours`) and consumed or listed as ``unused``; each of our model's keys is filled or
listed as ``missing`` with its reason (weights that come from elsewhere: VAE / CLIP image encoder folders, or the
4 ``conv_norm_out``/``conv_out`` keys the official reference U-Net does not have). An unexpected source key, a key
of ours that nothing fills and no reason covers, or a shape mismatch is an error. The result is a Lightning-style
checkpoint (``state_dict`` + ``hyper_parameters.model``) that ``lit_models.registry.load_model`` rebuilds.

Renaming (the official modules are diffusers-shaped; only the block internals and the module placement differ):

* official ``TemporalTransformerBlock`` → diffusers ``BasicTransformerBlock``: ``attention_blocks.{0,1}`` →
  ``attn{1,2}``, ``norms.{0,1}`` → ``norm{1,2}``, ``ff_norm`` → ``norm3``,
  ``attention_blocks.{0,1}.pos_encoder.pe`` → ``pos_embed.pe`` (the two copies of one fixed table);
* denoising U-Net ``….motion_modules.i.temporal_transformer.*`` (motion cross-attention) →
  ``denoiser.….motion_modules.i.motion.transformer.*``; ``….temporal_modules.i.temporal_transformer.*``
  (AnimateDiff) → ``denoiser.….motion_modules.i.temporal.*`` (diffusers ``MotionAdapter`` names); base keys →
  ``denoiser.*`` unchanged;
* reference U-Net → ``reference_net.*``; motion encoder → ``motion_encoder.*`` (block rename inside ``att_1/2/3``).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional

import torch

from toolbox.io import sha256_file

FILES = {
    "reference_unet": "xnemo_reference_unet.pth",
    "denoising_unet": "xnemo_denoising_unet.pth",
    "temporal_module": "xnemo_temporal_module.pth",
    "motion_encoder": "xnemo_motion_encoder.pth",
}
WEIGHTS_URL = "https://github.com/bytedance/x-nemo-inference#-pretrained-models (Google Drive: pretrained_weights/)"

_BLOCK_RENAMES = [
    (re.compile(r"\.attention_blocks\.[01]\.pos_encoder\.pe$"), ".pos_embed.pe"),
    (re.compile(r"\.attention_blocks\.0\."), ".attn1."),
    (re.compile(r"\.attention_blocks\.1\."), ".attn2."),
    (re.compile(r"\.norms\.0\."), ".norm1."),
    (re.compile(r"\.norms\.1\."), ".norm2."),
    (re.compile(r"\.ff_norm\."), ".norm3."),
]
_MOTION = re.compile(r"^(.*)\.motion_modules\.(\d+)\.temporal_transformer\.(.*)$")
_TEMPORAL = re.compile(r"^(.*)\.temporal_modules\.(\d+)\.temporal_transformer\.(.*)$")

# our keys that none of the four files fills, and why (prefix → reason)
EXTERNAL = {
    "reference_net.conv_norm_out.": "the official reference U-Net has no conv_norm_out/conv_out (its output is unused)",
    "reference_net.conv_out.": "the official reference U-Net has no conv_norm_out/conv_out (its output is unused)",
    "codec.": "VAE: from `vae_path` (official: stable-video-diffusion-img2vid-xt/vae)",
    "image_encoder.": "image encoder, not in the released files: CLIP from `image_encoder_path` (official: "
                      "sd-image-variations-diffusers/image_encoder), or the config's stand-in / learned_cnn",
    "null_context": "ours (learned null prompt; unused when the context is the CLIP image embedding)",
    "null_motion": "ours (learned null motion tokens, guidance_negative_motion=null only)",
    # the official loads both denoiser files with strict=False over the sd-image-variations U-Net: a base key in
    # neither file keeps that init (ours: `pretrained_model_name_or_path`, loaded by the model build)
    "denoiser.": "denoising U-Net key in neither file: keeps the pretrained_model_name_or_path init (official strict=False)",
}


def rename_block(key: str) -> str:
    """Official transformer-block names → diffusers ``BasicTransformerBlock`` names (idempotent)."""
    key = "." + key
    for pattern, repl in _BLOCK_RENAMES:
        key = pattern.sub(repl, key)
    return key[1:]


def official_to_ours(source: str, key: str) -> tuple[str, str]:
    """(our state-dict key, family) for ``key`` of the official file ``source`` (a :data:`FILES` name)."""
    if source == "motion_encoder":
        return "motion_encoder." + rename_block(key), "motion_encoder"
    if source == "reference_unet":
        return "reference_net." + key, "reference_unet"
    if source in ("denoising_unet", "temporal_module"):
        m = _MOTION.match(key)
        if m:
            return f"denoiser.{m[1]}.motion_modules.{m[2]}.motion.transformer.{rename_block(m[3])}", "motion_modules"
        m = _TEMPORAL.match(key)
        if m:
            return f"denoiser.{m[1]}.motion_modules.{m[2]}.temporal.{rename_block(m[3])}", "temporal_modules"
        return "denoiser." + key, "base"
    raise ValueError(f"unknown official file kind {source!r}; expected one of {sorted(FILES)}")


def write_fake_official(manifest: dict, out_dir: Path, target: Optional[dict[str, torch.Tensor]] = None,
                        dtype: torch.dtype = torch.float16, seed: int = 0) -> dict[str, Path]:
    """Fake official files from the key manifest (``fixtures/official/xnemo/checkpoint_keys.json``), for round-trip
    tests: every official key, split as the README infers (``xnemo_denoising_unet.pth`` = base + motion modules,
    ``xnemo_temporal_module.pth`` = temporal modules). Without ``target``, tensors are meta (manifest shapes, no
    data); with ``target`` (our model's state dict, may be on meta), small random values of our shapes — the
    official names at another width — so the whole CLI and ``load_model`` can run on a small model."""
    g = torch.Generator().manual_seed(seed)
    groups = {"reference_unet": manifest["files"]["pretrained_weights/xnemo_reference_unet.pth"]["keys"],
              "motion_encoder": manifest["files"]["pretrained_weights/xnemo_motion_encoder.pth"]["keys"]}
    den = manifest["denoising_unet_module_keys"]
    groups["denoising_unet"] = {k: v for k, v in den.items() if not v["group"].startswith("temporal_modules")}
    groups["temporal_module"] = {k: v for k, v in den.items() if v["group"].startswith("temporal_modules")}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, keys in groups.items():
        sd = {}
        for key, meta in keys.items():
            want = getattr(torch, meta["dtype"])
            if target is None:
                sd[key] = torch.empty(meta["shape"], dtype=dtype if want.is_floating_point else want, device="meta")
                continue
            shape = target[official_to_ours(kind, key)[0]].shape       # shapes only: target may be on meta
            if not want.is_floating_point:
                sd[key] = torch.zeros(shape, dtype=want)
            elif key.endswith("running_var"):
                sd[key] = (1 + torch.rand(shape, generator=g)).to(dtype)
            else:
                sd[key] = (torch.randn(shape, generator=g) * 0.02).to(dtype)
        paths[kind] = out_dir / FILES[kind]
        torch.save(sd, paths[kind])
    return paths


sha256 = sha256_file   # toolbox.io: one chunked sha256 for every importer


def find_files(root: Path) -> dict[str, Path]:
    """The four official files under ``root`` or ``root/pretrained_weights``; a clear error names what is absent."""
    found, missing = {}, []
    for kind, name in FILES.items():
        for cand in (root / name, root / "pretrained_weights" / name):
            if cand.is_file():
                found[kind] = cand
                break
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(f"{root}: missing {', '.join(missing)} — download the official X-NeMo weights "
                                f"({WEIGHTS_URL}) and put them in {root} or {root / 'pretrained_weights'}")
    return found


def load_state(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path}: not a flat state dict of tensors")
    return sd


def _reason(key: str) -> Optional[str]:
    for prefix, why in EXTERNAL.items():
        if key.startswith(prefix):
            return why
    return None


def convert(sources: dict[str, dict[str, torch.Tensor]], target: dict[str, torch.Tensor],
            dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict]:
    """Rename the official state dicts (``{file kind: state dict}``, later files override earlier ones as the
    official ``load_state_dict`` order does) onto ``target`` (our model's state dict: names and shapes; may be on
    the meta device). → (converted state dict, report); :func:`check_report` turns a shape mismatch, an official key
    with no place in ours, or a key of ours left unfilled without a reason into an error."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    report = {"consumed": {}, "unused": {}, "missing": {}, "missing_unexplained": [], "shape_mismatch": [],
              "overridden": []}
    order = ["reference_unet", "motion_encoder", "denoising_unet", "temporal_module"]
    for kind in [k for k in order if k in sources] + [k for k in sources if k not in order]:
        for key, value in sources[kind].items():
            ours, family = official_to_ours(kind, key)
            if ours not in target:
                report["unused"].setdefault(kind, []).append(key)
                continue
            if tuple(value.shape) != tuple(target[ours].shape):
                report["shape_mismatch"].append(f"{kind}:{key} {tuple(value.shape)} -> {ours} {tuple(target[ours].shape)}")
                continue
            if ours in out and not key.endswith("pos_encoder.pe"):
                report["overridden"].append(f"{ours} ({origin[ours]} -> {kind})")
            value = value.to(dtype) if value.is_floating_point() else value.to(target[ours].dtype)
            out[ours] = value
            origin[ours] = kind
            report["consumed"].setdefault(f"{kind}/{family}", 0)
            report["consumed"][f"{kind}/{family}"] += 1
    for key in target:
        if key in out:
            continue
        why = _reason(key)
        if why is None:
            report["missing_unexplained"].append(key)
        else:
            report["missing"].setdefault(why, 0)
            report["missing"][why] += 1
    return out, report


def check_report(report: dict) -> None:
    problems = []
    if report["shape_mismatch"]:
        problems.append(f"{len(report['shape_mismatch'])} shape mismatches, e.g. {report['shape_mismatch'][:3]}")
    unused = sum(len(v) for v in report["unused"].values())
    if unused:
        first = {k: v[:3] for k, v in report["unused"].items()}
        problems.append(f"{unused} official keys have no place in model=xnemo, e.g. {first}")
    if report["missing_unexplained"]:
        problems.append(f"{len(report['missing_unexplained'])} model keys filled by no file, e.g. "
                        f"{report['missing_unexplained'][:3]}")
    if problems:
        raise ValueError("X-NeMo import: " + "; ".join(problems))


REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_YAML = REPO / "experiments" / "configs" / "model" / "xnemo.yaml"


SAMPLING_YAML = REPO / "experiments" / "configs" / "sampling" / "xnemo_{}.yaml"


def model_config(overrides: Optional[list[str]] = None, model_yaml: Optional[str] = None,
                 sampling: Optional[str] = None):
    """``model=xnemo`` without Hydra (``lit_models`` does not import ``experiments``): the schema, the model YAML
    (read as a file; ``${seed}`` → 0), the sampling preset ``experiments/configs/sampling/xnemo_<sampling>.yaml``
    if named, and ``key=value`` overrides (a leading ``model.`` is accepted)."""
    from omegaconf import OmegaConf

    from lit_models.xnemo.config import XNeMoConfig

    path = Path(model_yaml) if model_yaml else DEFAULT_MODEL_YAML
    y = OmegaConf.load(path) if path.is_file() else OmegaConf.create({})
    if "defaults" in y:
        y.pop("defaults")
    if sampling:
        preset = Path(str(SAMPLING_YAML).format(sampling))
        if not preset.is_file():
            raise FileNotFoundError(f"--sampling {sampling}: no preset {preset}")
        y = OmegaConf.merge(y, OmegaConf.load(preset))
    dot = OmegaConf.from_dotlist([o.removeprefix("model.") for o in (overrides or [])])
    root = OmegaConf.create({"seed": 0, "model": OmegaConf.merge(y, dot)})
    resolved = OmegaConf.to_container(root, resolve=True)["model"]
    return OmegaConf.merge(OmegaConf.structured(XNeMoConfig), resolved)


def import_official(root: str, out: str, dtype: str = "fp32", model_overrides: Optional[list[str]] = None,
                    report_path: Optional[str] = None, model_yaml: Optional[str] = None,
                    sampling: Optional[str] = "official") -> dict:
    """The CLI's work: read the four files, build our model from its config (its VAE / CLIP / SD-init weights load
    from the config's folders, or the build fails naming them), rename and check, fill our state dict, write
    ``out`` (+ the JSON report). Returns the report."""
    from omegaconf import OmegaConf

    from lit_models.registry import build_model

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    files = find_files(Path(root))
    digests = {kind: sha256(path) for kind, path in files.items()}
    sources = {kind: load_state(path) for kind, path in files.items()}
    cfg = model_config(model_overrides, model_yaml, sampling)
    model = build_model(cfg)
    target = model.state_dict()
    state, report = convert(sources, target, torch_dtype)
    check_report(report)
    full = {k: (v.to(torch_dtype) if v.is_floating_point() else v) for k, v in target.items()}
    full.update(state)
    report["sha256"] = {str(files[k]): d for k, d in digests.items()}
    report["dtype_in"] = {kind: sorted({str(v.dtype) for v in sd.values() if v.is_floating_point()})
                          for kind, sd in sources.items()}
    report["dtype_out"] = str(torch_dtype)
    report["num_keys"] = {"ours": len(target), "filled_from_official": len(state),
                          "from_model_build": len(target) - len(state)}
    ckpt = {"state_dict": full, "hyper_parameters": {"model": OmegaConf.to_container(cfg, resolve=True,
                                                                                      enum_to_str=True)},
            "xnemo_import": {k: report[k] for k in ("sha256", "dtype_in", "dtype_out", "consumed", "missing",
                                                    "num_keys")}}
    torch.save(ckpt, out)
    if report_path:
        Path(report_path).write_text(json.dumps(report, indent=1, default=str))
    return report


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lit_models.xnemo.import_official", description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="folder with the official xnemo_*.pth files (or its pretrained_weights/ parent)")
    ap.add_argument("--out", required=True, help="output checkpoint (.ckpt)")
    ap.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    ap.add_argument("--report", default=None, help="also write the key report as JSON")
    ap.add_argument("--model-config", default=None,
                    help=f"model YAML (default {DEFAULT_MODEL_YAML.relative_to(REPO)}), then the overrides")
    ap.add_argument("overrides", nargs="*", help="model config overrides, e.g. model.image_encoder_path=...")
    ap.add_argument("--sampling", default="official",
                    help="sampling preset baked into the checkpoint config (experiments/configs/sampling/xnemo_NAME.yaml; "
                         "default official — the official script's scheduler, steps, guidance, windows); 'none' for none")
    args = ap.parse_intermixed_args(argv)
    report = import_official(args.dir, args.out, args.dtype, args.overrides, args.report, args.model_config,
                             None if args.sampling == "none" else args.sampling)
    print(json.dumps({"out": args.out, "num_keys": report["num_keys"], "consumed": report["consumed"],
                      "missing": report["missing"], "overridden": len(report["overridden"]),
                      "sha256": report["sha256"], "dtype_in": report["dtype_in"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
