"""Evaluation-suite benchmark: ``python -m benchmarks.eval_suite [--frames 32] [--size 256] [--device cpu|cuda]
[--suites fomm_reconstruction,vox_self] [--suite-frames 8]``.

1. Throughput at ``--size``² on the same frames: frames/s of each metric alone (fresh frames, nothing shared) and of
   the whole suite in one pass (shared uint8 views and face analyses). Goal: suite ≥ 0.9 × "sum of parts", where
   sum of parts = N / Σ_m t_m (the throughput of running every metric separately).
2. Memory: peak RSS of a full ``run_evaluation`` (copy-source model, generated 64² videos, L1/PSNR/SSIM/FID) at
   1k and 10k frames, each in a fresh process: flat when results stream to disk and FID keeps running sums.

3. ``--suites``: the same measurement for the metric sets of whole protocols (``fomm_reconstruction``: L1 +
   pose-evaluation's FAN / OpenFace; ``vox_self``), frames/s of each metric alone and of the suite in one pass.

Networks whose weights are absent here (Inception, AlexNet, VGG, S3FD, FAN, OpenFace) run as labelled STAND-INs
(``*_STANDIN``; the same architecture and cost); a protocol's ArcFace / insightface backends without their weights
are replaced by dlib's (printed as a substitution); dlib's face models are real (they ship offline). Numbers are
for this machine only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch


def _frames(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Astronaut portrait (scikit-image; every install has it) jittered per frame: faces present for dlib."""
    import torch.nn.functional as F
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255  # 3×512×512
    img = img[:, 0:400, 60:460]
    rng = np.random.default_rng(seed)
    pred, tgt = [], []
    for _ in range(n):
        dx, dy = rng.integers(-12, 13, size=2)
        crop = torch.roll(img, shifts=(int(dy), int(dx)), dims=(1, 2))
        tgt.append(crop)
        pred.append((crop + 0.03 * torch.randn(crop.shape, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30))))).clamp(0, 1))
    rs = lambda x: F.interpolate(torch.stack(x), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    pred, tgt = rs(pred).clamp(0, 1), rs(tgt).clamp(0, 1)
    return pred, tgt, tgt[0]


def _protocol(metrics: list[str], standins: list[str], size: int):
    from eval.protocol import load_protocol

    return load_protocol("synthfaces_self", [f"resolution={size}", f"metrics=[{','.join(metrics)}]",
                                             f"standin_metrics=[{','.join(standins)}]", "face_upsample=0"])


def _reset_memos(suite) -> None:
    """Forget analyses kept by frame content (eval.pose_eval), so each metric alone computes its own."""
    for m in suite.frame_metrics:
        if hasattr(getattr(m, "analyzer", None), "_cache"):
            m.analyzer._cache.clear()


def _timed_pass(suite, pred, tgt, src, device) -> tuple[dict, float]:
    """(seconds of each metric alone on fresh frames, seconds of the whole suite in one pass)."""
    from eval.metrics import FrameBatch

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    alone = {}
    for m in suite.frame_metrics + suite.dataset_metrics:
        _reset_memos(suite)
        fb = FrameBatch(pred.to(device), tgt.to(device), src.to(device), driving=tgt.to(device))
        sync()
        t0 = time.perf_counter()
        m.frames(fb) if hasattr(m, "frames") else m.update(fb)
        sync()
        alone[m.name] = time.perf_counter() - t0
    _reset_memos(suite)
    fb = FrameBatch(pred.to(device), tgt.to(device), src.to(device), driving=tgt.to(device))
    sync()
    t0 = time.perf_counter()
    suite.evaluate(fb)
    sync()
    return alone, time.perf_counter() - t0


def protocol_throughput(name: str, n: int, size: int, device: str) -> dict:
    """frames/s of protocol ``name``'s metric set (per metric alone, and the suite in one pass) at ``size``²."""
    from eval.metrics import FrameBatch
    from eval.protocol import load_protocol
    from eval.suite import build_suite
    from eval.weights import REGISTRY

    proto = load_protocol(name)
    metrics = [m for m in proto.metrics if m != "fvd"]
    need = {"fid": ["inception_v3_2015_12_05"], "lpips": ["alexnet_imagenet" if proto.lpips_net == "alex"
                                                         else "vgg16_imagenet"],
            "akd_fan": ["s3fd", "fan2d"], "mkr_fan": ["s3fd", "fan2d"], "aed_openface": ["openface_nn4small2"]}
    standins = [k for k, ws in need.items() if any(k == m or m.startswith(k + "_") for m in metrics)
                and not all(REGISTRY[w].present() for w in ws)]
    subst = {}
    for key, want, names in (("id_backend", "arcface", ["arcface_w600k_r50", "scrfd_det_10g"]),
                             ("landmark_backend", "insightface", ["scrfd_det_10g", "insightface_1k3d68"])):
        if proto.get(key) == want and not all(REGISTRY[w].present() for w in names):
            subst[key] = f"{want} → dlib (weights absent)"
            proto[key] = "dlib"
    proto.metrics = metrics
    proto.standin_metrics = standins
    proto.face_upsample = 0
    pred, tgt, src = _frames(n, size)
    suite = build_suite(proto, device=device)
    suite.evaluate(FrameBatch(pred[:2].to(device), tgt[:2].to(device), src.to(device), driving=tgt[:2].to(device)))
    alone, t_suite = _timed_pass(suite, pred, tgt, src, device)
    return {"protocol": name, "frames": n, "size": size, "device": device, "standin": standins,
            "substituted": subst, "alone_fps": {k: n / v for k, v in alone.items()}, "suite_fps": n / t_suite,
            "sum_of_parts_fps": n / sum(alone.values()), "ratio": (n / t_suite) / (n / sum(alone.values())),
            "onnx_providers": suite.facts.get("onnx_providers", {})}


def throughput(n: int, size: int, device: str) -> dict:
    from eval.metrics import FrameBatch
    from eval.suite import build_suite
    from eval.weights import REGISTRY

    standins = [m for m, w in (("fid", "inception_v3_2015_12_05"), ("lpips", "alexnet_imagenet"))
                if not REGISTRY[w].present()]
    metrics = ["l1", "psnr", "ssim", "lpips", "fid", "id_dlib", "aed_dlib", "akd_dlib", "mkr_dlib"]
    pred, tgt, src = _frames(n, size)
    suite = build_suite(_protocol(metrics, standins, size), device=device)
    # warm-up (first-call costs: conv algorithm selection, model loading)
    suite.evaluate(FrameBatch(pred[:2].to(device), tgt[:2].to(device), src.to(device)))
    alone = {}
    for m in suite.frame_metrics + suite.dataset_metrics:
        fb = FrameBatch(pred.to(device), tgt.to(device), src.to(device))
        t0 = time.perf_counter()
        if hasattr(m, "frames"):
            m.frames(fb)
        else:
            m.update(fb)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        alone[m.name] = time.perf_counter() - t0
    fb = FrameBatch(pred.to(device), tgt.to(device), src.to(device))
    t0 = time.perf_counter()
    suite.evaluate(fb)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_suite = time.perf_counter() - t0
    sum_parts_fps = n / sum(alone.values())
    return {"frames": n, "size": size, "device": device, "standin": standins,
            "alone_fps": {k: n / v for k, v in alone.items()}, "suite_fps": n / t_suite,
            "sum_of_parts_fps": sum_parts_fps, "ratio": (n / t_suite) / sum_parts_fps,
            "onnx_providers": suite.facts.get("onnx_providers", {})}


def memory_child(frames: int, size: int) -> dict:
    """Run a full evaluation of ``frames`` frames (16-frame videos) and report peak RSS (MiB)."""
    import resource
    import tempfile

    from eval.runner import run_evaluation
    from lit_models.baselines import CopySource
    from lit_models.baselines.config import CopySourceConfig

    T = 17  # 16 scored frames + the source frame (self mode)
    n_videos = frames // (T - 1)

    def videos():
        for i in range(n_videos):
            g = torch.Generator().manual_seed(i)
            clip = torch.rand(T, 3, size, size, generator=g)
            yield {"source": clip[0], "driving": clip, "target": clip, "meta": {"video_id": f"v{i}"}}

    proto = _protocol(["l1", "psnr", "ssim", "fid"], ["fid"], size)
    proto.use_fid_reference_cache = False
    proto.num_grid_videos = 1
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res = run_evaluation(CopySource(CopySourceConfig()), videos(), proto, d, progress=False)
    return {"frames": res["num_frames"], "seconds": time.perf_counter() - t0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mib": rss0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.eval_suite", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-frames", default="1000,10000")
    ap.add_argument("--memory-size", type=int, default=64)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--suites", default="", help="comma-separated protocols whose metric sets are timed too "
                                                 "(e.g. fomm_reconstruction,vox_self)")
    ap.add_argument("--suite-frames", type=int, default=8, help="frames per --suites measurement")
    ap.add_argument("--skip-default", action="store_true", help="only the --suites measurements")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--_memory_child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._memory_child is not None:
        print(json.dumps(memory_child(a._memory_child, a.memory_size)))
        return 0
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
    out: dict = {}

    def show(t: dict, title: str) -> None:
        print(f"\n{title} at {t['size']}², {t['frames']} frames, {t['device']} (stand-ins: {t['standin'] or 'none'}"
              + (f"; {', '.join(t['substituted'].values())}" if t.get("substituted") else "") + ")")
        for k, v in t["alone_fps"].items():
            print(f"  {k:<26} alone: {v:9.2f} frames/s")
        print(f"  {'sum of parts':<26}      : {t['sum_of_parts_fps']:9.2f} frames/s")
        print(f"  {'whole suite (1 pass)':<26}      : {t['suite_fps']:9.2f} frames/s   "
              f"ratio {t['ratio']:.2f} (goal ≥ 0.9)")
        for backend, f in (t.get("onnx_providers") or {}).items():
            print(f"  onnxruntime {backend:<14} requested {f['providers_requested']}, sessions {f['sessions']}")

    if not a.skip_default:
        out["throughput"] = throughput(a.frames, a.size, a.device)
        show(out["throughput"], "throughput")
    for name in [s for s in a.suites.split(",") if s]:
        out.setdefault("suites", {})[name] = protocol_throughput(name, a.suite_frames, a.size, a.device)
        show(out["suites"][name], f"eval_protocol={name}")
    if not a.skip_memory:
        out["memory"] = []
        print(f"\npeak memory of a full evaluation at {a.memory_size}² (fresh process each)")
        for n in map(int, a.memory_frames.split(",")):
            r = subprocess.run([sys.executable, "-m", "benchmarks.eval_suite", "--_memory_child", str(n),
                                "--memory-size", str(a.memory_size)], capture_output=True, text=True, check=True)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            out["memory"].append(m)
            print(f"  {m['frames']:>6} frames: peak RSS {m['peak_rss_mib']:7.1f} MiB  ({m['seconds']:.1f} s)")
    if a.json:
        from datamodules.utils import atomic_write_json

        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
