"""MRFA's probe — does the refinement make the motion more accurate? Also a CLI:
``python -m eval.probes.mrfa RUN_OR_SWEEP_DIR ...`` (moved from ``lit_models/mrfa/diagnostics.py``: the probe reads
its data from ``datamodules``, which a model may not).

Image metrics cannot tell whether the refined motion ``T̂ = T_prior + Σ_k ΔT_k`` is closer to the true motion
than the prior ``T_prior`` (the generator can hide either). On SynthFaces the renderer gives the true keypoints of
the source ``s_k`` and of every driving frame ``d_k``, so the backward motion can be checked where it is known:
a motion field ``T`` (driving pixel → source location) is right at keypoint k when ``T(d_k) = s_k``.

Per self-reenactment test frame (source = frame 0 of the clip, as ``synthfaces_self``), in pixels at the data
resolution (means over keypoints and frames):

* ``kp_motion_err_zero``    = mean_k ‖d_k − s_k‖ — the identity motion (how much there is to explain);
* ``kp_motion_err_prior``   = mean_k ‖T_prior(d_k) − s_k‖ — the keypoint / dense-motion prior;
* ``kp_motion_err_refined`` = mean_k ‖T̂(d_k) − s_k‖ — after the K refinement steps (= prior when K = 0);
* ``refine_shift``          = mean over the frame of ‖T̂ − T_prior‖ — how far the refiner moves the motion.

Occluded keypoints (a hand over the face) are included: their motion is still defined by the renderer.

Registered as the probe ``mrfa.keypoint_motion`` (:func:`run`, on the protocol's self-reenactment test set) with
the declared metrics

* ``motion_err_prior`` / ``motion_err_refined`` — lower is better;
* ``motion_err_zero`` — a property of the data, no direction;
* ``refine_shift`` — a property of the model, no direction.

The CLI writes ``motion_diagnostics.json`` into every run directory and prints one row per run (and per K: mean
over seeds when several runs share K).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from eval.probes.base import Probe, register_probe
from lit_models.common.warp import resize_grid


def pixels_to_grid(points: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates (pixel centres at integers) → the warp grids' normalised coordinates (align_corners=True)."""
    return points / (size - 1) * 2 - 1


def grid_to_pixels(points: torch.Tensor, size: int) -> torch.Tensor:
    return (points + 1) / 2 * (size - 1)


def sample_motion(grid: torch.Tensor, points_px: torch.Tensor, size: int) -> torch.Tensor:
    """``T(p)`` in pixels for a backward motion grid B×h×w×2 (normalised, any h×w) at points B×K×2 (pixels at
    ``size``): bilinear lookup in the grid (align_corners=True, as the warps use it)."""
    q = pixels_to_grid(points_px, size)[:, :, None, :].to(grid.dtype)                  # B×K×1×2
    t = F.grid_sample(grid.permute(0, 3, 1, 2), q, mode="bilinear", align_corners=True, padding_mode="border")
    return grid_to_pixels(t[..., 0].permute(0, 2, 1), size)                             # B×K×2


def keypoint_motion_error(grid: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
                          size: int) -> torch.Tensor:
    """B×K distances ‖T(d_k) − s_k‖ (pixels at ``size``)."""
    return (sample_motion(grid, kp_driving, size) - kp_source).norm(dim=-1)


@torch.no_grad()
def diagnose(model, samples, size: int, refine_iters: Optional[int] = None) -> dict[str, float]:
    """Mean keypoint-motion errors over ``samples`` (dicts with ``source`` 3×H×W, ``driving`` T×3×H×W and
    ``keypoints`` T×K×2 of the clip whose frame 0 is the source)."""
    sums: dict[str, list[float]] = {k: [] for k in ("zero", "prior", "refined", "shift")}
    for s in samples:
        src, drv, kp = s["source"].float(), s["driving"][1:].float(), s["keypoints"].float()
        T = drv.shape[0]
        if T == 0:
            continue
        kp_s_gt, kp_d_gt = kp[0].expand(T, -1, -1), kp[1:]
        srcs = src[None].expand(T, -1, -1, -1).contiguous()
        kps, kpd = model.kp_detector(srcs), model.kp_detector(drv)
        bg = model.bg_predictor(srcs, drv) if getattr(model, "bg_predictor", None) is not None else None
        out = model.generate(srcs, kps, kpd, bg, refine_iters=refine_iters)
        prior = out["prior_deformation"]
        refined = out["deformation"]
        sums["zero"].append(float((kp_d_gt - kp_s_gt).norm(dim=-1).mean()))
        sums["prior"].append(float(keypoint_motion_error(prior, kp_s_gt, kp_d_gt, size).mean()))
        sums["refined"].append(float(keypoint_motion_error(refined, kp_s_gt, kp_d_gt, size).mean()))
        p = resize_grid(prior, refined.shape[1:3])
        sums["shift"].append(float(((refined - p) / 2 * (size - 1)).norm(dim=-1).mean()))
    if not sums["zero"]:
        raise ValueError("no samples with driving frames beyond the source")
    return {"kp_motion_err_zero": float(np.mean(sums["zero"])), "kp_motion_err_prior": float(np.mean(sums["prior"])),
            "kp_motion_err_refined": float(np.mean(sums["refined"])), "refine_shift": float(np.mean(sums["shift"])),
            "num_videos": len(sums["zero"])}


def run_dirs(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "checkpoints" / "last.ckpt").is_file():
            out.append(p)
        else:
            out.extend(sorted(c.parent.parent for c in p.glob("*/checkpoints/last.ckpt")))
    if not out:
        raise FileNotFoundError(f"no run directory with checkpoints/last.ckpt under {', '.join(paths)}")
    return out


def diagnose_run(run: Path, max_videos: int = 0, num_frames: int = 16) -> dict:
    from omegaconf import OmegaConf

    from datamodules import build_datamodule
    from lit_models.registry import load_model
    from toolbox.io import atomic_write_json

    cfg = OmegaConf.load(run / "config.yaml")
    model = load_model(str(run / "checkpoints" / "last.ckpt")).eval()
    if not hasattr(model, "refiner"):
        raise ValueError(f"{run}: {type(model).__name__} is not an MRFA model")
    dm = build_datamodule(cfg.data)
    ds = dm.eval_dataset(split="test", mode="self", num_frames=num_frames, stride=1, max_videos=max_videos)
    samples = (ds[i] for i in range(len(ds)))
    res = diagnose(model, (s for s in samples if s.get("keypoints") is not None), int(cfg.data.resolution))
    res.update({"refine_iters": int(model.cfg.refine_iters), "seed": int(cfg.seed), "run": str(run)})
    atomic_write_json(run / "motion_diagnostics.json", res)
    return res


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.probes.mrfa", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="MRFA run directories or sweep directories")
    ap.add_argument("--max-videos", type=int, default=0)
    ap.add_argument("--num-frames", type=int, default=16)
    a = ap.parse_args(argv)
    rows = [diagnose_run(r, a.max_videos, a.num_frames) for r in run_dirs(a.paths)]
    cols = ["kp_motion_err_zero", "kp_motion_err_prior", "kp_motion_err_refined", "refine_shift"]
    print("| K | n | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for k in sorted({r["refine_iters"] for r in rows}):
        group = [r for r in rows if r["refine_iters"] == k]
        cells = [f"{np.mean([r[c] for r in group]):.3f}" for c in cols]
        print(f"| {k} | {len(group)} | " + " | ".join(cells) + " |")
    print("pixels at the data resolution; motion_diagnostics.json written into each run directory")
    return 0


def run(model, datamodule, protocol) -> dict[str, float]:
    """The probe: :func:`diagnose` on the protocol's self-reenactment test set (``datamodule.eval_dataset``, one
    video at a time) when its samples carry ground-truth keypoints (SynthFaces) → ``motion_err_zero / _prior /
    _refined`` and ``refine_shift`` in pixels; {} for a cross protocol, a datamodule without ``eval_dataset`` or
    keypoint-free (real) data. The model is put in eval mode for the probe and restored."""
    if str(protocol.mode) != "self" or not hasattr(datamodule, "eval_dataset"):
        return {}
    ds = datamodule.eval_dataset(split=protocol.split, mode="self", num_frames=protocol.num_frames,
                                 stride=protocol.stride, max_videos=protocol.max_videos)
    if len(ds) == 0:
        return {}
    first = ds[0]
    if first.get("keypoints") is None:     # real data: no ground-truth keypoints, so nothing to decode further
        return {}
    device = next(model.parameters()).device

    def stream():                           # one video at a time (the test set is never held in memory)
        for i in range(len(ds)):
            s = first if i == 0 else ds[i]
            if s.get("keypoints") is not None:
                yield {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in s.items()}

    was_training = model.training
    model.eval()
    try:
        res = diagnose(model, stream(), int(first["source"].shape[-1]))
    finally:
        model.train(was_training)
    return {"motion_err_zero": res["kp_motion_err_zero"], "motion_err_prior": res["kp_motion_err_prior"],
            "motion_err_refined": res["kp_motion_err_refined"], "refine_shift": res["refine_shift"]}


PROBE = register_probe(Probe(
    name="mrfa.keypoint_motion", methods=("mrfa",), run=run,
    directions={"motion_err_prior": False, "motion_err_refined": False, "motion_err_zero": None,
                "refine_shift": None}))


if __name__ == "__main__":
    sys.exit(main())
