"""Diffusion-core benchmark (``python -m benchmarks.diffusion``): X-NeMo tiny training step vs bare diffusers.

In one process, on the same shapes (``model=xnemo_tiny``: B clips × T frames, 12×16² latents), interleaved
(A, B, A, B, …) so that load on a shared machine hits both alike; medians of ``--repeats`` timed steps:

1. ``xnemo``: ``compute_losses`` → weighted total → backward → Adam step of the real module (ReferenceNet with the
   reference-attention processors, motion encoder, driving augmentation, AnimateDiff temporal layers, DDPM noise);
2. ``bare_pair``: the same diffusers networks called directly with stock processors — ``UNetMotionModel`` on B·T
   frames plus the ``UNet2DConditionModel`` ReferenceNet on B references, random context tokens, MSE, backward,
   Adam — i.e. the same network work without portraitlab's glue (reference concatenation excepted);
3. ``bare_unet``: one bare ``UNet2DConditionModel`` step on B·T frames (the brief's literal baseline; the module
   does ~2× its work since it also runs a ReferenceNet and temporal layers);
4. sampling seconds per generated frame of ``animate`` (DDIM, ``num_inference_steps`` of the config, guidance,
   windows) on one ``--sample-frames`` clip.

The overhead figure is ``xnemo / bare_pair`` (goal ≤ 1.1: portraitlab's glue — reference bank, processors, motion
encoder, augmentation, noise bookkeeping — costs at most 10 % over the networks it drives); ``bare_unet`` is printed
for reference only. On a shared CPU run it as ``OMP_WAIT_POLICY=PASSIVE`` (``make bench`` sets it) or
``--threads 1``: OpenMP's active wait otherwise dominates these small kernels. ``--json PATH`` writes the figures (atomically); ``--device cuda`` runs on a GPU.

``--sensitivity RUN_OR_SWEEP_DIR [...]`` instead loads each run's ``checkpoints/last.ckpt`` (its ``config.yaml``'s
model) and prints its motion sensitivity on SynthFaces probe clips (``eval.probes.xnemo``): what
swapping the driving clip vs the source changes in the output, also as a fraction of what it changes in the
ground truth (``motion_gain``, ``source_gain``; a model that ignores its motion tokens has motion_gain ≈ 0), and whether
the output moves the way the truth does (``motion_alignment``, cosine of the two changes).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(overrides: list[str]):
    from experiments.compose import compose
    from lit_models.registry import build_model

    cfg = compose("train", ["model=xnemo_tiny", *overrides])
    torch.manual_seed(0)
    return build_model(cfg.model)


def load_run(run_dir):
    """(model in eval mode, config) of a training run directory (``config.yaml`` + ``checkpoints/last.ckpt``)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from experiments.schema import register_configs
    from lit_models.registry import build_model

    register_configs()
    run = Path(run_dir)
    cfg = OmegaConf.load(run / "config.yaml")
    model = build_model(cfg.model)
    from lit_models.registry import load_checkpoint

    ckpt = load_checkpoint(str(run / "checkpoints" / "last.ckpt"))   # weights_only, like every other load
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), cfg


def expand_runs(paths) -> list:
    """Run directories (``config.yaml`` + ``checkpoints/last.ckpt``) from run or sweep directories, in order; other
    directories under a sweep (``wandb/``, plots) are skipped; a path that holds no run raises naming it."""
    from pathlib import Path

    runs = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file() and (p / "checkpoints" / "last.ckpt").is_file():
            runs.append(p)
            continue
        found = sorted(d for d in p.glob("*/") if (d / "config.yaml").is_file() and (d / "checkpoints" / "last.ckpt").is_file())
        if not found and p.name != "wandb":
            raise FileNotFoundError(f"{p}: neither a run directory (config.yaml + checkpoints/last.ckpt) nor a sweep of them")
        runs.extend(found)
    return runs


def sensitivity(run_dirs, pairs: int = 4, frames: int = 4, motion_scale: float = 1.5, json_path=None) -> list:
    """Motion sensitivity of trained runs on one fixed SynthFaces probe set (same clips and noise for every run)."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from eval.probes.xnemo import probe_sensitivity, synth_probe

    probe = synth_probe(pairs, frames, 64, motion_scale)
    rows = []
    for rd in expand_runs(run_dirs):
        model, cfg = load_run(rd)
        res = probe_sensitivity(model, probe)
        rows.append({"run": Path(rd).name, "model": cfg.model.name, "motion_dim": cfg.model.get("motion_dim"),
                     "seed": cfg.get("seed"), **res})
    keys = ["motion", "source", "ratio", "motion_gain", "motion_alignment", "source_gain", "l1_Ab", "l1_Ab_vs_Aa_truth"]
    table = Table(title=f"motion sensitivity — {pairs} SynthFaces probe pairs × {frames} frames, "
                        f"motion_scale {motion_scale} (ideal gains 1; motion_ideal "
                        f"{rows[0]['motion_ideal']:.4f}, source_ideal {rows[0]['source_ideal']:.4f})")
    for k in ["run", *keys]:
        table.add_column(k, justify="left" if k == "run" else "right")
    for r in rows:
        table.add_row(r["run"], *(f"{r[k]:.4f}" for k in keys))
    Console(width=200).print(table)
    if json_path:
        from datamodules.utils import atomic_write_json

        atomic_write_json(json_path, rows)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sensitivity", nargs="+", default=None, metavar="RUN_DIR",
                    help="instead of timing: motion sensitivity of trained runs (checkpoints/last.ckpt)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sample-frames", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sensitivity:
        return {"sensitivity": sensitivity(args.sensitivity, json_path=args.json)}
    from diffusers import UNet2DConditionModel, UNetMotionModel
    from rich.console import Console
    from rich.table import Table

    device = torch.device(args.device)
    model = build(["model.motion_injection=text_xattn"]).to(device)   # the bare networks below mirror this design
    cfg = model.cfg
    B, T, r = args.batch, args.frames, cfg.resolution
    batch = {"source": torch.rand(B, 3, r, r, device=device), "driving": torch.rand(B, T, 3, r, r, device=device)}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    # bare diffusers networks of the same shapes, stock attention processors
    unet_cfg = dict(model.reference_net.config)
    bare_ref = UNet2DConditionModel.from_config(unet_cfg).to(device)
    bare_den = UNetMotionModel.from_config(dict(model.denoiser.config)).to(device)
    bare_unet = UNet2DConditionModel.from_config(unet_cfg).to(device)
    n_tok = model.motion_tokens.num_tokens
    D = model.cross_attention_dim
    C, h = model.latent_channels, r // model.codec.factor
    opt_pair = torch.optim.Adam(list(bare_ref.parameters()) + list(bare_den.parameters()), lr=1e-4)
    opt_unet = torch.optim.Adam(bare_unet.parameters(), lr=1e-4)

    def step_xnemo():
        loss = model.weighted_total(model.compute_losses(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_pair():
        z = torch.randn(B, C, T, h, h, device=device)
        t = torch.randint(0, 1000, (B,), device=device)
        ctx = torch.randn(B * T, n_tok, D, device=device)
        ref = bare_ref(torch.randn(B, C, h, h, device=device), torch.zeros(B, device=device, dtype=torch.long),
                       encoder_hidden_states=torch.randn(B, 1, D, device=device)).sample
        loss = torch.nn.functional.mse_loss(bare_den(z, t, encoder_hidden_states=ctx).sample, torch.randn_like(z))
        loss = loss + 0 * ref.mean()  # the ReferenceNet is trained too: backpropagate through it as the module does
        opt_pair.zero_grad(set_to_none=True)
        loss.backward()
        opt_pair.step()

    def step_unet():
        z = torch.randn(B * T, C, h, h, device=device)
        t = torch.randint(0, 1000, (B * T,), device=device)
        ctx = torch.randn(B * T, n_tok, D, device=device)
        loss = torch.nn.functional.mse_loss(bare_unet(z, t, encoder_hidden_states=ctx).sample, torch.randn_like(z))
        opt_unet.zero_grad(set_to_none=True)
        loss.backward()
        opt_unet.step()

    steps = {"xnemo": step_xnemo, "bare_pair": step_pair, "bare_unet": step_unet}
    times = {k: [] for k in steps}
    for i in range(args.warmup + args.repeats):
        for name, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [a / b for a, b in zip(times["xnemo"], times["bare_pair"])]

    src = torch.rand(1, 3, 64, 64, device=device)
    drv = torch.rand(1, args.sample_frames, 3, 64, 64, device=device)
    model.animate(src, drv[:, :2], num_inference_steps=1)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    model.animate(src, drv)
    _sync(device)
    sample_s = time.perf_counter() - t0

    counts = model.parameter_counts()
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "batch": B, "frames": T, "resolution": r,
        "latent": [C, h, h], "params": counts,
        "train_step_s": med, "ratio_vs_bare_pair": med["xnemo"] / med["bare_pair"],
        # per interleaved repeat (adjacent in time, so load drift cancels), then the median and the quartiles
        "ratio_paired": paired, "ratio_paired_median": statistics.median(paired),
        "ratio_paired_quartiles": [float(q) for q in statistics.quantiles(paired, n=4)] if len(paired) > 1 else paired,
        "ratio_vs_bare_unet": med["xnemo"] / med["bare_unet"],
        "sampling": {"frames": args.sample_frames, "steps": cfg.num_inference_steps, "sampler": cfg.sampler,
                     "guidance_scale": cfg.guidance_scale, "window": [cfg.window_size, cfg.window_overlap],
                     "seconds": sample_s, "seconds_per_frame": sample_s / args.sample_frames},
    }
    table = Table(title=f"X-NeMo tiny vs bare diffusers — {device}, B={B} T={T}, {C}×{h}² latents")
    table.add_column("step")
    table.add_column("median s", justify="right")
    table.add_column("× xnemo", justify="right")
    for k, v in med.items():
        table.add_row(k, f"{v:.4f}", f"{med['xnemo'] / v:.2f}")
    console = Console()
    console.print(table)
    console.print(f"X-NeMo overhead ratio = module step / the same diffusers networks called directly "
                  f"(xnemo / bare_pair) = {result['ratio_vs_bare_pair']:.3f}  (goal ≤ 1.1); per interleaved repeat: "
                  f"median {result['ratio_paired_median']:.3f}, quartiles "
                  f"{', '.join(f'{q:.3f}' for q in result['ratio_paired_quartiles'])}")
    console.print(f"for reference: one bare UNet2DConditionModel step = {med['bare_unet']:.4f} s "
                  f"(xnemo / bare_unet = {result['ratio_vs_bare_unet']:.3f}; the module also runs a ReferenceNet, "
                  f"temporal layers and the motion encoder, so this is not an overhead figure)")
    console.print(f"sampling: {sample_s:.2f} s for {args.sample_frames} frames = "
                  f"{result['sampling']['seconds_per_frame']:.3f} s/frame ({cfg.sampler}, {cfg.num_inference_steps} "
                  f"steps, guidance {cfg.guidance_scale}, window {cfg.window_size}/{cfg.window_overlap})")
    if args.json:
        from datamodules.utils import atomic_write_json

        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
