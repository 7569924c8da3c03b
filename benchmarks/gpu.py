"""GPU benchmark (``benchmarks/gpu.sh`` → ``python3 -m benchmarks.gpu``; ≤ 8 minutes on one H100/H200).

1. Training, per method: seconds per step (forward + weighted losses + backward + Adam, bf16 autocast), peak CUDA
   memory and samples/s — the tiny SynthFaces configs (64², batch 8) and the full-size models at batch 1 with
   activation checkpointing (MRFA 256² T=1; X-Portrait / X-NeMo 512² × 8 frames with SD-1.5-shaped *random* weights:
   the cost of a step does not depend on the weights' values; MRFA's perceptual loss is the offline stand-in).
2. Evaluation: frames/s of ``eval.runner.run_evaluation`` on the GPU at 256² (SynthFaces test clips up-sampled to
   the protocol's 256², all frames) with l1/psnr/ssim and the labelled stand-in FID; the copy-source baseline
   generates, so the figure is the data pipeline + metric suite's throughput.
   insightface/ArcFace face metrics: reported as unavailable unless the insightface package and its ONNX weights
   are present (onnxruntime's CUDA provider is listed either way). The CPU figure to beat: 5 frames/s at 256².
``--json PATH`` writes every figure; ``--quick`` skips the full-size models.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

TINY = {"mrfa": "mrfa_synthfaces", "xportrait": "xportrait_synthfaces", "xnemo": "xnemo_synthfaces",
        "interanimate": "interanimate_synthfaces", "imposter": "imposter_tiny"}
# the GPU image has no dlib (its face models ship in a 100 MB wheel): InterAnimate's ArcFace/dlib ID preserver is off
EXTRA = {"interanimate": ["model.use_id_preserver=false"]}
FULL = {"mrfa": ["model=mrfa", "model.perceptual=pyramid_l1_ssim", "data.resolution=256", "data.num_frames=1"],
        "xportrait": ["model=xportrait", "data.resolution=512", "data.num_frames=8"],
        "xnemo": ["model=xnemo", "data.resolution=512", "data.num_frames=8"]}


def _sync():
    torch.cuda.synchronize()


def bench_steps(model, batch_fn, steps: int, warmup: int = 2) -> dict:
    dev = torch.device("cuda")
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-5)
    times = []
    torch.cuda.reset_peak_memory_stats()
    bs = None
    for i in range(warmup + steps):
        batch = batch_fn()
        bs = batch["source"].shape[0]
        _sync()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.weighted_total(model.compute_losses(batch))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if not math.isfinite(float(loss)):
            raise RuntimeError(f"non-finite loss {float(loss)}")
    step = sorted(times)[len(times) // 2]
    return {"step_s": step, "peak_GiB": torch.cuda.max_memory_allocated() / 2**30, "samples_per_s": bs / step,
            "batch": bs, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def tiny_rows(root: Path, steps: int) -> dict:
    from datamodules import build_datamodule
    from datamodules.dataset import batch_to_float
    from experiments.compose import compose
    from lit_models.registry import build_model

    out = {}
    for method, exp in TINY.items():
        cfg = compose("train", [f"experiment={exp}", *EXTRA.get(method, []), f"data.root={root}", "data.synth=null", "data.decoder=pyav", "data.num_workers=0",
                                "run_dir=/nonexistent"])
        dm = build_datamodule(cfg.data)
        it = iter(dm.train_dataloader())
        cache = [next(it) for _ in range(2)]
        dev = torch.device("cuda")

        turn = itertools.count(1)

        def batch_fn(cache=cache, turn=turn):
            b = cache[next(turn) % len(cache)]
            return {key: (v.to(dev) if torch.is_tensor(v) else
                          ({kk: vv.to(dev) if torch.is_tensor(vv) else vv for kk, vv in v.items()} if isinstance(v, dict) else v))
                    for key, v in batch_to_float(b).items()}
        try:
            out[method] = bench_steps(build_model(cfg.model), batch_fn, steps)
        except Exception as err:  # one method failing must not hide the others' figures
            out[method] = {"error": f"{type(err).__name__}: {err}"[:300]}
        print(f"  tiny {method:13s} {_fmt(out[method])}", flush=True)
        torch.cuda.empty_cache()
    return out


def full_rows(steps: int) -> dict:
    from experiments.compose import compose
    from experiments.plan import _architecture_only, meta_batch
    from lit_models.registry import build_model

    out = {}
    for method, overrides in FULL.items():
        cfg = compose("train", [*overrides, "data.batch_size=1", "run_dir=/nonexistent"])
        try:
            with _architecture_only(cfg.model):
                model = build_model(cfg.model)
            shapes = meta_batch(cfg)

            def batch_fn(shapes=shapes):
                b = {k: (torch.rand(v.shape, device="cuda") if torch.is_tensor(v) else v) for k, v in shapes.items()}
                b["target"] = b["driving"]
                return b
            out[method] = bench_steps(model, batch_fn, steps, warmup=1)
            del model
        except Exception as err:
            out[method] = {"error": f"{type(err).__name__}: {err}"[:300]}
        print(f"  full {method:13s} {_fmt(out[method])}  ({' '.join(overrides)})", flush=True)
        torch.cuda.empty_cache()
    return out


def eval_row(root: Path) -> dict:
    from omegaconf import OmegaConf

    from datamodules import build_datamodule
    from eval.runner import run_evaluation
    from experiments.compose import compose
    from lit_models.registry import build_model

    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    try:
        import insightface  # noqa: F401

        insight = "insightface importable (ArcFace/SCRFD weights still needed: eval.weights)"
    except ImportError:
        insight = "insightface not installed: ArcFace/landmark face metrics not measured (no py3.12 wheel; weights absent)"
    cfg = compose("train", ["model=copy_source", f"data.root={root}", "data.synth=null", "data.decoder=pyav", "data.num_workers=4",
                            "eval_protocol=synthfaces_self", "run_dir=/nonexistent"])
    # no identity metrics: insightface is absent (see above) and the SynthFaces embedder (synthid) trains for
    # minutes on first use, outside this benchmark's budget
    proto = OmegaConf.merge(cfg.eval_protocol, {"resolution": 256, "max_videos": 0, "num_frames": 0,
                                                "standin_metrics": ["fid"], "metrics": ["l1", "psnr", "ssim", "fid"],
                                                "use_fid_reference_cache": False})
    model = build_model(cfg.model).cuda()
    dm = build_datamodule(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_evaluation(model, dm, proto, Path(tmp), device=torch.device("cuda"), progress=False)
        wall = time.perf_counter() - t0
    row = {"frames": res["num_frames"], "videos": res["num_videos"], "seconds": wall,
           "frames_per_s": res["num_frames"] / wall, "resolution": 256, "metrics": sorted(res["metrics"]),
           "onnxruntime_providers": providers, "insightface": insight}
    print(f"  eval suite @256²: {row['frames_per_s']:.1f} frames/s ({row['frames']} frames, {row['videos']} videos, "
          f"{wall:.1f} s) metrics {row['metrics']}", flush=True)
    print(f"  onnxruntime providers: {providers}; {insight}", flush=True)
    return row


def _fmt(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    return (f"{r['step_s'] * 1000:8.1f} ms/step  peak {r['peak_GiB']:6.2f} GiB  {r['samples_per_s']:7.1f} samples/s "
            f"(batch {r['batch']}, {r['params_M']:.1f} M params)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="skip the full-size models")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device", file=sys.stderr)
        return {}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    from datamodules.config import SynthConfig
    from datamodules.synthfaces import render_dataset

    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | bf16 autocast, Adam", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        t0 = time.perf_counter()
        render_dataset(root, SynthConfig(num_identities=16, clips_per_identity=2, num_frames=24, resolution=64,
                                         num_cross_pairs=16, seed=0))
        print(f"SynthFaces 16×2×24 @ 64² rendered in {time.perf_counter() - t0:.1f} s", flush=True)
        result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        print("training (median of steps after warm-up):", flush=True)
        result["tiny"] = tiny_rows(root, args.steps)
        if not args.quick:
            result["full"] = full_rows(max(3, args.steps // 3))
        print("evaluation:", flush=True)
        try:
            result["eval"] = eval_row(root)
        except Exception as err:
            result["eval"] = {"error": f"{type(err).__name__}: {err}"[:300]}
            print(f"  eval ERROR {result['eval']['error']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
