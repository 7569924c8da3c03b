"""Can InterAnimate's ``lambda_ortho`` reach the samples? (``python -m benchmarks.interanimate_ortho``)

Builds ``model=interanimate`` at its FULL latent widths (d = 320, n = 32 spatial / m = 16 temporal latents, 8 heads,
zero-initialised ``W_o``) with random weights (no SD-1.5 here: every number is ``random_init``): on CPU
(``--preset cpu``: 16² pixel "latents", U-Net levels 320/640 of one layer each, no ReferenceNet) or as the full
SD-1.5-shaped denoiser (320/640/1280/1280, 2 layers per block, ReferenceNet, AnimateDiff modules) at 64² latents on
a GPU (``--preset full``). From one
initialisation it trains ``--steps`` Adam steps (lr of the config, 1e-5) on one fixed synthetic clip batch (smooth
images, hand/face boxes) for ``lambda_ortho`` = 0 and ``--lam`` under each ``ortho_target`` (``raw``: the loss on
``L_s`` / ``L_t``; ``quantized``: on the quantized latents ``L̃`` each block's attention reads), and prints:

* ``cos_L_*``: mean |cos| between distinct raw latents; ``cos_Lq_*``: the same for the quantized latents ``L̃``,
  averaged over blocks and rows, on a fixed probe (z_t at t = 500, the batch's motion state);
* ``ortho``: the loss value under that target;
* ``d_out``: mean |ε̂(λ) − ε̂(0)| on the probe after training (0 = λ changed nothing the denoiser outputs);
  ``drift``: mean |ε̂(0) − ε̂(init)| (how far training moved the output at all), ``d_out/drift`` their ratio;
* ``d_sample`` (``--sample-steps K``): mean |x(λ) − x(0)| of ``animate`` samples (K DDIM steps, same noise).

By default only InterAnimate's own modules train (interaction blocks and latents, motion guider, mask predictor,
null context): the U-Net and ReferenceNet stay frozen (CPU memory; the path ortho loss → latents → attention →
output does not pass through them). ``--train-all`` trains everything. ``--json PATH`` writes the figures.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

PRESETS = {
    # full interaction widths (d = 320; blocks at the U-Net's 320 / 640 channels), two levels of one layer, no
    # ReferenceNet, 16² "latents": fits a 2-core / 4 GiB CPU budget
    "cpu": dict(res=16, frames=2, overrides=[
        "model.unet.layers_per_block=1", "model.use_reference_net=false", "model.gradient_checkpointing=false",
        "model.unet.block_out_channels=[320,640]", "model.unet.down_block_types=[CrossAttnDownBlock2D,DownBlock2D]",
        "model.unet.up_block_types=[UpBlock2D,CrossAttnUpBlock2D]", "model.motion_channels=[64,128]"]),
    # the full SD-1.5-shaped denoiser (2 layers per block, ReferenceNet) at 64² latents
    "full": dict(res=64, frames=8, overrides=["model.gradient_checkpointing=true"]),
}


def build(preset: str, res: int, extra: list[str], seed: int = 0):
    from experiments.compose import compose
    from lit_models.registry import build_model

    ov = ["model=interanimate", "model.pretrained_model_name_or_path=null", "model.latent=pixel",
          "model.unet.in_channels=3", "model.unet.out_channels=3", f"model.resolution={res}",
          f"model.unet.sample_size={res}", "model.use_id_preserver=false", f"data.resolution={res}",
          *PRESETS[preset]["overrides"], *extra]
    torch.manual_seed(seed)
    return build_model(compose("train", ov).model)


def synthetic_batch(B: int, T: int, res: int, seed: int = 0) -> dict:
    """Smooth random frames (bilinear-upsampled 4² noise) with a hand box over a face box."""
    g = torch.Generator().manual_seed(seed)
    smooth = lambda *lead: F.interpolate(torch.rand(int(torch.tensor(lead).prod()), 3, 4, 4, generator=g),  # noqa: E731
                                         size=(res, res), mode="bilinear", align_corners=False).view(*lead, 3, res, res)
    hand = torch.zeros(B, T, 1, res, res)
    face = torch.zeros(B, T, 1, res, res)
    hand[..., res // 8: res // 2, res // 4: res * 5 // 8] = 1
    face[..., res // 4: res * 7 // 8, res // 4: res * 3 // 4] = 1
    return {"source": smooth(B), "driving": smooth(B, T), "masks": {"hand": hand, "face": face}}


def own_parameters(m) -> list[torch.nn.Parameter]:
    skip = {id(p) for p in m.denoiser.parameters()}
    if m.reference_net is not None:
        skip |= {id(p) for p in m.reference_net.parameters()}
    return [p for p in m.parameters() if id(p) not in skip]


@torch.no_grad()
def probe(m, batch: dict, seed: int = 1) -> dict:
    dev = m.spatial_latents.device
    src, drv = m.to_model(batch["source"].to(dev)), m.to_model(batch["driving"].to(dev))
    B, T = drv.shape[:2]
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(B, T, m.latent_channels, m.cfg.resolution, m.cfg.resolution, generator=g).to(dev)
    keep = torch.ones(B, dtype=torch.bool, device=dev)
    m._pending = {"masks": m.batch_masks({"masks": {k: v.to(dev) for k, v in batch["masks"].items()}})}
    try:
        state = m.encode_motion(src, drv, keep)
        m.write_reference(m.encode(src))
        eps = m.denoise(z_t, torch.full((B,), 500, device=dev), state, torch.arange(B, device=dev), keep)
    finally:
        m._pending = {}
        m.ctx.mask = None
        if m.bank is not None:
            m.bank.clear()
    stats = m.latent_stats()
    return {"eps": eps.float().cpu(), "cos_L_s": stats.get("latent_abs_cos_spatial"),
            "cos_L_t": stats.get("latent_abs_cos_temporal"), "cos_Lq_s": stats.get("quantized_abs_cos_spatial"),
            "cos_Lq_t": stats.get("quantized_abs_cos_temporal")}


def train(m, batch: dict, steps: int, lr: float, train_all: bool) -> list[dict]:
    m.train()
    params = [p for p in (m.parameters() if train_all else own_parameters(m)) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    dev = m.spatial_latents.device
    b = {"source": batch["source"].to(dev), "driving": batch["driving"].to(dev),
         "masks": {k: v.to(dev) for k, v in batch["masks"].items()}}
    hist = []
    for _ in range(steps):
        terms = m.compute_losses(b)
        loss = m.weighted_total(terms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append({k: float(v.detach()) for k, v in terms.items()})
    m.eval()
    return hist


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=None, help="default: the config's lr (1e-5)")
    ap.add_argument("--lam", type=float, default=None, help="λ_ortho > 0 to compare with 0 (default: the config's)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--res", type=int, default=None)
    ap.add_argument("--targets", default="raw,quantized")
    ap.add_argument("--sample-steps", type=int, default=0)
    ap.add_argument("--train-all", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (model.*)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = PRESETS[args.preset]
    res, T = args.res or p["res"], args.frames or p["frames"]
    dev = torch.device(args.device)
    t0 = time.time()
    m = build(args.preset, res, list(args.overrides)).to(dev)
    lam = float(m.cfg.lambda_ortho if args.lam is None else args.lam)
    lr = float(m.cfg.optimizer.lr if args.lr is None else args.lr)
    init = {k: v.detach().clone() for k, v in m.state_dict().items()}
    batch = synthetic_batch(args.batch, T, res)
    counts = m.parameter_counts()
    print(f"[interanimate_ortho] random_init, preset {args.preset}: {res}² × {T} frames, d={m.cfg.latent_dim}, "
          f"n={m.cfg.num_spatial_latents}, m={m.cfg.num_temporal_latents}, {len(m.spatial_blocks)} spatial + "
          f"{len(m.temporal_blocks)} temporal interaction blocks, {counts['total'] / 1e6:.0f} M params, built in "
          f"{time.time() - t0:.0f} s; lr {lr:g}, λ_ortho 0 vs {lam:g}, {args.steps} steps, "
          f"{'all' if args.train_all else 'InterAnimate-own'} parameters trained")
    base = probe(m, batch)
    out = {"preset": args.preset, "res": res, "frames": T, "steps": args.steps, "lr": lr, "lam": lam,
           "train_all": args.train_all, "init": {k: v for k, v in base.items() if k != "eps"}, "runs": {}}
    print(f"init: mean|cos| L_s {base['cos_L_s']:.4f} L_t {base['cos_L_t']:.4f} | quantized L̃_s "
          f"{base['cos_Lq_s']:.4f} L̃_t {base['cos_Lq_t']:.4f} | |ε̂| {base['eps'].abs().mean():.4f}")
    for target in args.targets.split(","):
        res_t = {}
        for value in (0.0, lam):
            m.load_state_dict(init)
            m.cfg.ortho_target, m.cfg.lambda_ortho = target, value
            t1 = time.time()
            hist = train(m, batch, args.steps, lr, args.train_all)
            pr = probe(m, batch)
            if args.sample_steps:
                with torch.no_grad():
                    pr["sample"] = m.animate(batch["source"].to(dev), batch["driving"].to(dev),
                                             masks={k: v.to(dev) for k, v in batch["masks"].items()},
                                             num_inference_steps=args.sample_steps).float().cpu()
            pr["hist"], pr["seconds"] = hist, time.time() - t1
            res_t[value] = pr
        r0, r1 = res_t[0.0], res_t[lam]
        d_out = float((r1["eps"] - r0["eps"]).abs().mean())
        drift = float((r0["eps"] - base["eps"]).abs().mean())
        row = {"d_out": d_out, "d_out_max": float((r1["eps"] - r0["eps"]).abs().max()), "drift": drift,
               "ratio": d_out / drift if drift > 0 else float("nan")}
        for name, r in (("lam0", r0), ("lam", r1)):
            row[name] = {k: r[k] for k in ("cos_L_s", "cos_L_t", "cos_Lq_s", "cos_Lq_t")}
            row[name]["ortho_first"] = r["hist"][0].get("loss_ortho")
            row[name]["ortho_last"] = r["hist"][-1].get("loss_ortho")
            row[name]["diffusion_last"] = r["hist"][-1].get("loss_diffusion")
            row[name]["seconds"] = r["seconds"]
        if args.sample_steps:
            row["d_sample"] = float((r1["sample"] - r0["sample"]).abs().mean())
        out["runs"][target] = row
        for name, lab in (("lam0", "λ=0"), ("lam", f"λ={lam:g}")):
            x = row[name]
            o = "—" if x["ortho_first"] is None else f"{x['ortho_first']:.4g}→{x['ortho_last']:.4g}"
            print(f"{target:>9} {lab:>9}: mean|cos| L_s {x['cos_L_s']:.4f} L_t {x['cos_L_t']:.4f} | L̃_s "
                  f"{x['cos_Lq_s']:.4f} L̃_t {x['cos_Lq_t']:.4f} | ortho {o} | {x['seconds']:.0f} s")
        extra = f", d_sample {row['d_sample']:.3g}" if args.sample_steps else ""
        print(f"{target:>9}: d_out {d_out:.3g} (max {row['d_out_max']:.3g}), drift {drift:.3g}, "
              f"d_out/drift {row['ratio']:.3g}{extra}")
    if args.json:
        from toolbox.io import atomic_write_json

        atomic_write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
