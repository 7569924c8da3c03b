"""Import the released X-NeMo weights (github.com/bytedance/x-nemo-inference) into a ``model=xnemo`` checkpoint.

    python -m lit_models.xnemo.import_official DIR --out xnemo.ckpt [--dtype fp32|fp16] [--report report.json]

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
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Optional

import torch

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
    "image_encoder.": "CLIP image encoder: from `image_encoder_path` (official: sd-image-variations-diffusers/image_encoder)",
    "null_context": "ours (learned null prompt; unused when the context is the CLIP image embedding)",
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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


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
    the meta device). → (converted state dict, report). Raises on a shape mismatch, an unknown source key, or a key
    of ours left unfilled without a reason."""
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


def build_target(overrides: list[str], device: str = "meta"):
    """Our ``model=xnemo`` built (by default on the meta device: names and shapes only) and its config."""
    from experiments.compose import compose  # noqa: F401  (entry-point helper; lazy so lit_models stays import-clean)
    raise NotImplementedError


def import_official(root: str, out: str, dtype: str = "fp32", model_overrides: Optional[list[str]] = None,
                    report_path: Optional[str] = None) -> dict:
    """The CLI's work: read, rename, check, write ``out`` (+ ``report_path``). Returns the report."""
    from omegaconf import OmegaConf

    from lit_models.registry import build_model, compose_model_config

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    files = find_files(Path(root))
    cfg = compose_model_config(["model=xnemo", *(model_overrides or [])])
    with torch.device("meta"):
        model = build_model(cfg)
    target = model.state_dict()
    sources = {kind: load_state(path) for kind, path in files.items()}
    state, report = convert(sources, target, torch_dtype)
    check_report(report)
    report["sha256"] = {str(p): sha256(p) for p in files.values()}
    report["dtype_in"] = {kind: sorted({str(v.dtype) for v in sd.values() if v.is_floating_point()})
                          for kind, sd in sources.items()}
    report["dtype_out"] = str(torch_dtype)
    ckpt = {"state_dict": state, "hyper_parameters": {"model": OmegaConf.to_container(cfg, resolve=True)},
            "xnemo_import": {k: report[k] for k in ("sha256", "dtype_in", "dtype_out", "consumed", "missing")},
            "partial_state_dict": True}
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
    ap.add_argument("overrides", nargs="*", help="model config overrides, e.g. model.image_encoder_path=...")
    args = ap.parse_args(argv)
    report = import_official(args.dir, args.out, args.dtype, args.overrides, args.report)
    print(json.dumps({"out": args.out, "consumed": report["consumed"], "missing": report["missing"],
                      "sha256": report["sha256"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
