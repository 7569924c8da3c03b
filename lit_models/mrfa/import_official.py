"""Import an official MRFA checkpoint (JialeTao/MRFA ``%08d-checkpoint.pth`` / released ``.pth``) as a portraitlab
Lightning checkpoint that ``evaluate``, ``animate`` and ``eval.compare`` load like any other::

    python -m lit_models.mrfa.import_official CKPT.pth --out mrfa_vox.ckpt [--config official.yaml]

* reads ``ckpt['model']`` (or a bare state dict) with ``torch.load(weights_only=True)``; strips the DDP /
  DataParallel ``module.`` prefix when present; casts float16 tensors to float32;
* drops the loss-only keys (``vgg.*``: the frozen perceptual VGG-19; ``pyramid.*``: the loss's image pyramid,
  whose scale-1 kernel is NaN in every official checkpoint) and reports them;
* sizes: inferred from the tensors' shapes, or read from the official YAML given with ``--config`` (then the
  shapes are checked against it). The attention head count is not visible in any shape: without ``--config``
  it is the official 8 (``--heads`` overrides);
* fails naming every unmatched key in both directions and every shape mismatch (no ``strict=False``);
* records the source file's sha256, path and epoch in the checkpoint (``official_import``) and prints a summary.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

import torch

from toolbox.io import sha256_file

LOSS_ONLY_PREFIXES = ("vgg.", "pyramid.")


sha256sum = sha256_file   # toolbox.io: one chunked sha256 for every importer


def normalise_state_dict(raw: dict) -> tuple[dict, dict]:
    """Official model dict → (our keys → float32 tensors, report). Strips ``module.``, drops loss-only keys."""
    if not raw or not all(isinstance(k, str) for k in raw):
        raise ValueError("the checkpoint holds no state dict (expected ckpt['model'] or a dict of tensors)")
    prefixed = sum(k.startswith("module.") for k in raw)
    if 0 < prefixed < len(raw):
        raise ValueError(f"{prefixed} of {len(raw)} keys carry the DDP 'module.' prefix and the others do not, e.g. "
                         f"{next(k for k in raw if not k.startswith('module.'))!r}")
    sd, dropped, halves = {}, [], 0
    for k, v in raw.items():
        k = k[len("module."):] if prefixed else k
        if k.startswith(LOSS_ONLY_PREFIXES):
            dropped.append(k)
            continue
        if not torch.is_tensor(v):
            raise ValueError(f"checkpoint key {k!r} is a {type(v).__name__}, not a tensor")
        if v.is_floating_point():
            halves += v.dtype != torch.float32
            v = v.float()
        sd[k] = v
    return sd, {"ddp_prefix": bool(prefixed), "dropped_loss_only": dropped, "cast_to_float32": halves}


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_sizes(sd: dict) -> dict:
    """Our model config (overrides of MRFAConfig) from the official tensors' shapes."""
    def shape(k):
        if k not in sd:
            raise KeyError(f"cannot infer the model sizes: the checkpoint has no {k!r}")
        return tuple(sd[k].shape)

    cfg: dict = {}
    tok = shape("encoder.transformer.keypoint_token")           # 1 × 2K × dim
    K, dim = tok[1] // 2, tok[2]
    C = shape("encoder.pre_feature.stage3.0.branches.0.0.conv1.weight")[0]
    patch = int(round((shape("encoder.transformer.patch_to_embedding.weight")[1] / C) ** 0.5))
    grid = int(round(shape("encoder.transformer.pos_embedding")[1] ** 0.5))
    cfg["resolution"] = 4 * grid * patch
    cfg["num_kp"] = K
    cfg["prior"] = "mtia"
    cfg["use_jacobian"] = "encoder.transformer.mlp_head_jacobian.1.weight" in sd

    def stage(n):
        nb = _count(sd, rf"encoder\.pre_feature\.stage{n}\.0\.branches\.(\d+)\.")
        return {f"stage{n}_channels": [shape(f"encoder.pre_feature.stage{n}.0.branches.{b}.0.conv1.weight")[0]
                                       for b in range(nb)],
                f"stage{n}_blocks": [_count(sd, rf"encoder\.pre_feature\.stage{n}\.0\.branches\.{b}\.(\d+)\.")
                                     for b in range(nb)],
                f"stage{n}_modules": _count(sd, rf"encoder\.pre_feature\.stage{n}\.(\d+)\.")}

    cfg["mtia"] = {"dim": dim, "depth": _count(sd, r"encoder\.transformer\.transformer\.layers\.(\d+)\."),
                   "mlp_ratio": shape("encoder.transformer.transformer.layers.0.1.fn.fn.net.0.weight")[0] // dim,
                   "patch_size": patch, "stem_channels": shape("encoder.pre_feature.conv1.weight")[0],
                   "stem_blocks": _count(sd, r"encoder\.pre_feature\.layer1\.(\d+)\."), **stage(2), **stage(3)}

    def hourglass(prefix, in_features):
        n = _count(sd, rf"{re.escape(prefix)}\.encoder\.down_blocks\.(\d+)\.")
        outs = [shape(f"{prefix}.encoder.down_blocks.{i}.conv.weight")[0] for i in range(n)]
        be = shape(f"{prefix}.decoder.up_blocks.{n - 1}.conv.weight")[0]
        if be + in_features and outs[0] != min(max(outs), 2 * be):
            raise ValueError(f"{prefix}: down-block widths {outs} do not follow block_expansion {be}")
        return {"block_expansion": be, "max_features": max(outs), "num_blocks": n}

    cfg["dense_motion"] = hourglass("dense_motion.hourglass", (K + 1) * 4)
    g_n = _count(sd, r"decoder\.generator\.down_blocks\.(\d+)\.")
    g_outs = [shape(f"decoder.generator.down_blocks.{i}.conv.weight")[0] for i in range(g_n)]
    cfg["generator"] = {"block_expansion": shape("decoder.generator.first.conv.weight")[0],
                        "max_features": max(g_outs), "num_up_blocks": g_n}
    if "decoder.kp_head.weight" in sd:
        cfg["driving_encoder"] = hourglass("decoder.kp", K)
        cfg["source_encoder"] = hourglass("decoder.kp_img", K + 3)
        corr_in = shape("decoder.corr_enc.convc1.weight")[1]
        cfg["refiner"] = {"corr_dim": shape("decoder.kp_head.weight")[0], "corr_radius": 3, "corr_levels": corr_in // 49,
                          "motion_channels": shape("decoder.corr_enc.convc1.weight")[0],
                          "context_channels": shape("decoder.refine.convc1.weight")[1]}
        cfg["refine_iters"] = _count(sd, r"decoder\.to_context\.(\d+)\.")
    else:
        cfg["refine_iters"] = 0
    return cfg


def sizes_from_official_yaml(path: Path) -> dict:
    """Our model config from an official YAML (config/vox1.yaml style)."""
    import yaml

    y = yaml.safe_load(Path(path).read_text())
    tp, rf = y["train_params"], y["raft_flow"]
    if tp.get("prior_model", "mtia") != "mtia":
        raise ValueError(f"{path}: train_params.prior_model={tp.get('prior_model')!r}; only the official default "
                         "'mtia' prior is importable (fomm/tps priors use different keypoint networks here)")
    M = y["mtia_kp_detector"]["MODEL"]
    ex = M["EXTRA"]
    dm = y["dense_motion"]
    cfg = {"resolution": int(rf["size"]), "num_kp": int(rf["num_kp"]), "prior": "mtia",
           "use_jacobian": bool(M.get("ESTIMATE_JACOBIAN", True)),
           "mtia": {"dim": M["DIM"], "depth": M["TRANSFORMER_DEPTH"], "heads": M["TRANSFORMER_HEADS"],
                    "mlp_ratio": M["TRANSFORMER_MLP_RATIO"], "patch_size": M["PATCH_SIZE"][0],
                    "stage2_channels": ex["STAGE2"]["NUM_CHANNELS"], "stage2_blocks": ex["STAGE2"]["NUM_BLOCKS"],
                    "stage2_modules": ex["STAGE2"]["NUM_MODULES"],
                    "stage3_channels": ex["STAGE3"]["NUM_CHANNELS"], "stage3_blocks": ex["STAGE3"]["NUM_BLOCKS"],
                    "stage3_modules": ex["STAGE3"]["NUM_MODULES"]},
           "dense_motion": {"block_expansion": dm["block_expansion"], "max_features": dm["max_features"],
                            "num_blocks": dm["num_blocks"], "scale_factor": dm.get("scale_factor", 1),
                            "kp_variance": dm.get("kp_variance", 0.01)},
           "generator": {k: rf["generator"][k] for k in ("block_expansion", "max_features", "num_up_blocks")},
           "driving_encoder": {k: rf["driving_encoder"][k] for k in ("block_expansion", "max_features", "num_blocks")},
           "source_encoder": {k: rf["source_encoder"][k] for k in ("block_expansion", "max_features", "num_blocks")},
           "refiner": {"corr_dim": rf["dim"]},
           "refine_iters": 0 if rf.get("prior_only") else 6}
    if M["PATCH_SIZE"][0] != M["PATCH_SIZE"][1]:
        raise ValueError(f"{path}: non-square PATCH_SIZE {M['PATCH_SIZE']} is not supported")
    return cfg


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _diff(a: dict, b: dict, prefix="") -> list[str]:
    """Sizes where the shape-inferred ``a`` contradicts the YAML ``b`` (max_features may legally be larger in the
    YAML: a cap that is never reached leaves no trace in the shapes)."""
    out = []
    for k, v in a.items():
        if k not in b:
            continue
        if isinstance(v, dict):
            out += _diff(v, b[k], f"{prefix}{k}.")
            continue
        vv = list(v) if isinstance(v, (list, tuple)) else v
        bb = list(b[k]) if isinstance(b[k], (list, tuple)) else b[k]
        if (vv > bb) if k == "max_features" else (vv != bb):
            out.append(f"{prefix}{k}: tensors {vv} vs config {bb}")
    return out


def build_from_official(ckpt_path: Path, config: Optional[Path] = None, heads: Optional[int] = None,
                        overrides: Optional[dict] = None):
    """(model with the official weights, report). Raises naming every unmatched key / shape."""
    from omegaconf import OmegaConf

    from lit_models.mrfa import MRFA
    from lit_models.mrfa.config import MRFAConfig

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    raw = ckpt["model"] if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) else ckpt
    sd, report = normalise_state_dict(raw)
    sizes = infer_sizes(sd)
    if config is not None:
        from_yaml = sizes_from_official_yaml(config)
        bad = _diff(sizes, from_yaml)
        if sizes.get("refine_iters") not in (0, 6) or from_yaml["refine_iters"] == 0:
            from_yaml["refine_iters"] = sizes["refine_iters"]
        if bad:
            raise ValueError(f"{config} does not describe {ckpt_path}: " + "; ".join(bad))
        sizes = _merge(sizes, from_yaml)
    if heads is not None:
        sizes = _merge(sizes, {"mtia": {"heads": heads}})
    if overrides:
        sizes = _merge(sizes, overrides)
    cfg = OmegaConf.merge(OmegaConf.structured(MRFAConfig), sizes)
    with torch.device("meta"):
        probe = MRFA(cfg)
    ours = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    missing, unexpected = sorted(set(ours) - set(sd)), sorted(set(sd) - set(ours))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {ours[k]}"
                    for k in set(sd) & set(ours) if tuple(sd[k].shape) != ours[k])
    if missing or unexpected or shapes:
        lines = [f"{ckpt_path}: the official weights do not match model {dict(sizes)}"]
        if missing:
            lines.append(f"{len(missing)} model keys missing from the checkpoint:\n  " + "\n  ".join(missing))
        if unexpected:
            lines.append(f"{len(unexpected)} checkpoint keys the model does not have:\n  " + "\n  ".join(unexpected))
        if shapes:
            lines.append(f"{len(shapes)} shape mismatches:\n  " + "\n  ".join(shapes))
        raise ValueError("\n".join(lines))
    model = MRFA(cfg)
    model.load_state_dict(sd, strict=True)
    report.update({"sizes": sizes, "num_keys": len(sd), "epoch": ckpt.get("epoch") if isinstance(ckpt, dict) else None,
                   "parameters": sum(p.numel() for p in model.parameters())})
    return model.eval(), report


def import_official(ckpt_path, out, config=None, heads=None, overrides=None) -> dict:
    import lightning as L

    ckpt_path, out = Path(ckpt_path), Path(out)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"official checkpoint {ckpt_path} not found (the released vox.pth.tar / "
                                "%08d-checkpoint.pth of JialeTao/MRFA)")
    model, report = build_from_official(ckpt_path, config, heads, overrides)
    report["sha256"] = sha256sum(ckpt_path)
    report["source"] = str(ckpt_path.resolve())
    lightning_ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                      "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0,
                      "official_import": {k: report[k] for k in ("source", "sha256", "epoch", "ddp_prefix",
                                                                 "dropped_loss_only", "cast_to_float32", "num_keys")}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(lightning_ckpt, tmp)
    tmp.replace(out)
    report["out"] = str(out)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lit_models.mrfa.import_official", description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", help="official checkpoint (.pth / .pth.tar)")
    ap.add_argument("--out", required=True, help="Lightning checkpoint to write")
    ap.add_argument("--config", help="the official YAML the checkpoint was trained with (sizes, attention heads)")
    ap.add_argument("--heads", type=int, help="MTIA attention heads when no --config (official: 8)")
    a = ap.parse_args(argv)
    try:
        r = import_official(a.ckpt, a.out, a.config, a.heads)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"source:      {r['source']}")
    print(f"sha256:      {r['sha256']}")
    print(f"epoch:       {r['epoch']}")
    print(f"keys:        {r['num_keys']} loaded (strict), DDP prefix {'stripped' if r['ddp_prefix'] else 'absent'}, "
          f"{r['cast_to_float32']} tensors cast to float32")
    print(f"dropped:     {len(r['dropped_loss_only'])} loss-only keys (vgg.*, pyramid.*)"
          + (f": {', '.join(r['dropped_loss_only'])}" if len(r['dropped_loss_only']) <= 8 else ""))
    s = r["sizes"]
    print(f"model:       resolution {s['resolution']}, {s['num_kp']} keypoints, K = {s['refine_iters']}, "
          f"{r['parameters']:,} parameters")
    print(f"wrote:       {r['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
