"""MRFA benchmark (``python -m benchmarks.mrfa``): training-step time and peak memory, inference time, parameters.

Full paper configuration (``model=mrfa``: 10 keypoints, 6 generator scales at 256²), batch 2, T = 1:

1. seconds per training step (forward + all losses + backward + Adam) at 128² and 256², K = 0 (prior only) and
   the full K (one refinement step per generator scale: 6 at both sizes, 5 down blocks); peak memory of each (CPU: peak RSS of a fresh
   process, also shown above the process's RSS after building the model; CUDA: ``max_memory_allocated``);
2. inference seconds per frame at 256² (``animate``, batch 1, full K);
3. trainable parameters per sub-network.

The perceptual loss in these timings is VGG-19 over the 4-level pyramid as in the paper: with the ImageNet
weights when present, else a VGG-19 with *random weights, labelled as such, for timing only* (the cost is the
same; no loss anyone trains with). ``--perceptual pyramid_l1_ssim`` times the offline stand-in instead.
Each configuration runs in its own process (clean peak-memory figures). ``--json PATH`` writes the figures.

Reference (official implementation, this machine type, 2 threads, random weights): 2.8 s/step at 128², 12.5 s at
256² (5.1 s prior-only), 1.6 s/frame inference at 256², 114 M parameters, ~7 GiB peak training at 256².
The machine may be shared: compare ratios measured in the same session.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # no OpenMP spin-waiting on a shared, oversubscribed CPU

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

REFERENCE = {"step_128_fullK": 2.8, "step_256_fullK": 12.5, "step_256_K0": 5.1, "infer_256_per_frame": 1.6,
             "params_M": 114.0, "peak_256_GiB": 7.0}


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux


def build(resolution: int, refine_iters: int | None, perceptual: str, device: str):
    import torch
    from omegaconf import OmegaConf

    from lit_models.common.perceptual import MultiScalePerceptualLoss, VGG19Features, vgg19_weights_path
    from lit_models.mrfa import MRFA
    from lit_models.mrfa.config import MRFAConfig

    cfg = OmegaConf.merge(OmegaConf.structured(MRFAConfig), {"resolution": resolution})
    if refine_iters is None:    # full K: one step per generator scale at this resolution
        refine_iters = cfg.gen_num_down_blocks + 1
    cfg.refine_iters = refine_iters
    label = perceptual
    if perceptual == "vgg19":
        try:
            vgg19_weights_path(cfg.vgg_weights)
        except FileNotFoundError:
            label = "vgg19 (random weights, timing only)"
        cfg.perceptual = "pyramid_l1_ssim"      # build the loss below
    else:
        cfg.perceptual = perceptual
    model = MRFA(cfg).to(device)
    if perceptual == "vgg19":
        loss = MultiScalePerceptualLoss("pyramid_l1_ssim", cfg.perceptual_scales, cfg.perceptual_layer_weights)
        loss.backend = "vgg19"
        if label == "vgg19":
            loss.vgg = VGG19Features(cfg.vgg_weights)
        else:
            from torchvision.models import vgg19

            loss.vgg = VGG19Features(net=vgg19(weights=None))
        model._perceptual.append(loss.to(device))
    return model, label


def _sync(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_job(resolution: int, refine_iters: int | None, perceptual: str, device: str, threads: int, steps: int,
              batch: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, label = build(resolution, refine_iters, perceptual, device)
    opt = model.configure_optimizers()
    b = {"source": torch.rand(batch, 3, resolution, resolution, device=device),
         "driving": torch.rand(batch, 1, 3, resolution, resolution, device=device)}
    base = _rss_gib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):       # the first step warms up (allocator, oneDNN primitives) and is not timed
        _sync(device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model.weighted_total(model.compute_losses(b))
        loss.backward()
        opt.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else _peak_rss_gib()
    queue.put({"resolution": resolution, "refine_iters": model.cfg.refine_iters, "perceptual": label,
               "s_per_step": statistics.median(times), "s_per_step_all": times,
               "peak_GiB": peak, "peak_above_model_GiB": (peak - base) if not device.startswith("cuda") else peak})


def infer_job(resolution: int, device: str, threads: int, frames: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, _ = build(resolution, None, "pyramid_l1_ssim", device)
    model.eval()
    src = torch.rand(1, 3, resolution, resolution, device=device)
    drv = torch.rand(1, frames, 3, resolution, resolution, device=device)
    model.animate(src, drv[:, :1])
    _sync(device)
    t = time.perf_counter()
    model.animate(src, drv, relative=True)
    _sync(device)
    groups = {"kp_detector": model.kp_detector, "dense_motion": model.dense_motion,
              "refiner.structure": model.refiner.structure, "refiner.update+context": [model.refiner.update,
                                                                                      model.refiner.to_context],
              "generator (prior path)": [m for n, m in model.generator.named_children() if n != "fuse"],
              "generator.fuse": model.generator.fuse}
    counts = {}
    for name, mods in groups.items():
        mods = mods if isinstance(mods, list) else [mods]
        counts[name] = sum(p.numel() for m in mods for p in m.parameters() if p.requires_grad)
    counts["total"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    queue.put({"s_per_frame": (time.perf_counter() - t) / frames, "frames": frames, "params": counts,
               "refine_iters": model.cfg.refine_iters})


def run(fn, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration (median reported)")
    ap.add_argument("--frames", type=int, default=4, help="frames for the inference timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--perceptual", default="vgg19", choices=["vgg19", "pyramid_l1_ssim"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    jobs = [(r, k) for r in args.resolutions for k in (0, None)]
    results = {"train": [], "device": args.device, "threads": args.threads, "batch": args.batch,
               "reference_official": REFERENCE}
    for r, k in track(jobs, description="MRFA training steps"):
        results["train"].append(run(train_job, r, k, args.perceptual, args.device, args.threads, args.steps, args.batch))
    results["inference"] = run(infer_job, 256, args.device, args.threads, args.frames)

    con = Console()
    t = Table(title=f"MRFA training step (batch {args.batch}, {args.device}, {args.threads} threads)")
    for col in ("res", "K", "perceptual", "s/step", "peak GiB", "peak above model GiB", "vs official"):
        t.add_column(col)
    for row in results["train"]:
        ref = {(128, False): REFERENCE["step_128_fullK"], (256, False): REFERENCE["step_256_fullK"],
               (256, True): REFERENCE["step_256_K0"]}.get((row["resolution"], row["refine_iters"] == 0))
        t.add_row(str(row["resolution"]), str(row["refine_iters"]), row["perceptual"], f"{row['s_per_step']:.2f}",
                  f"{row['peak_GiB']:.2f}", f"{row['peak_above_model_GiB']:.2f}",
                  f"{row['s_per_step'] / ref:.2f}×" if ref else "-")
    con.print(t)
    inf = results["inference"]
    con.print(f"inference at 256² (K={inf['refine_iters']}): {inf['s_per_frame']:.2f} s/frame "
              f"({inf['s_per_frame'] / REFERENCE['infer_256_per_frame']:.2f}× the official)")
    p = Table(title="trainable parameters (full config)")
    p.add_column("sub-network")
    p.add_column("params (M)")
    for k, v in inf["params"].items():
        p.add_row(k, f"{v / 1e6:.2f}")
    con.print(p)
    if args.json:
        from datamodules.utils import atomic_write_json

        atomic_write_json(Path(args.json), results)
    return results


if __name__ == "__main__":
    main()
