"""Same-run benchmark of our MRFA against the official code (``python -m benchmarks.mrfa --official PATH``).

PATH is a checkout of https://github.com/JialeTao/MRFA (the user provides it; nothing is downloaded). Both networks
are built from the official ``config/vox1.yaml`` sizes at ``--res`` (official default 256), our model gets the
official model's weights (``lit_models.mrfa.import_official``), and the script

1. checks that the two eval forwards give the same prediction (max abs diff printed);
2. times one training step (forward with the official losses: VGG-19 perceptual pyramid ×4 scales × 5 layers
   weight 10, equivariance 10, equivariance-Jacobian 10; backward; the official ∞-norm clip 10 on the prior;
   Adam) of each, *interleaved* in one process — official, ours, official, ours … — for K = 6 and K = 0
   (``raft_flow.prior_only``), batch ``--batch`` (2), and prints medians, the ratio ours/official, the peak
   memory (max of 2 further steps each, measured apart from the timed ones — CUDA: ``max_memory_allocated``;
   CPU: peak RSS above the RSS before the step, sampled every 2 ms) and the process CPU time (steadier than wall time when other processes share the machine).
   Same machine, same run, the same loss terms: only the ratios are meaningful across machines. (The losses are
   the official ones: the pyramid is the official ImagePyramide — Gaussian blur + nearest — and the equivariance
   Transform is the official one — L1-distance radial term, ``align_corners=False`` warp; see
   ``tests/lit_models/test_mrfa.py::test_equivariance_transform_and_loss_pyramid_are_the_official_ones``.)

``--set KEY=VALUE …`` overrides our model config (e.g. the memory knobs ``checkpoint_refiner=true
checkpoint_kp_detector=true checkpoint_generator=true``, or ``optimizer.fused=null``).

The VGG-19 of both losses has random weights unless torchvision's ImageNet file is cached (timing is the same;
the label says which). Needs ``einops`` to import the official code (``pip install einops``); timm's
``trunc_normal_`` is replaced by torch's when timm is absent. ``--json PATH`` writes the figures.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import copy
import json
import statistics
import sys
import threading
import time
import types
from pathlib import Path


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakRSS:
    """Peak resident memory above the value at entry, sampled in a thread (CPU runs). Freed heap memory is handed
    back to the OS first (glibc ``malloc_trim``), so the figure is the step's own working memory."""

    def __enter__(self):
        import gc

        gc.collect()
        _malloc_trim()
        self.base = self.peak = _rss_bytes()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def gib(self) -> float:
        return (self.peak - self.base) / 2 ** 30


def peak_tensor_gib(fn) -> float:
    """Peak bytes of live tensors above the start of ``fn()``, in GiB, from the profiler's allocation events
    (``profile_memory=True``): the CPU counterpart of CUDA's ``max_memory_allocated``. Unlike peak RSS it does not
    depend on how the C allocator hands memory back to the OS (glibc keeps freed heap pages of many small
    allocations, so RSS moves with the allocation pattern, not only with what is alive)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in p.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak / 2 ** 30


CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
            "aten::_slow_conv2d_backward", "aten::slow_conv_transpose2d", "aten::cudnn_convolution",
            "aten::_convolution_depthwise2d")


def conv_seconds(fn) -> tuple[float, float]:
    """(seconds in convolution kernels forward + backward, seconds of all ops) of one profiled ``fn()``: the
    share an implementation cannot go below without computing different convolutions."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    ev = p.key_averages()
    conv = sum(e.self_cpu_time_total for e in ev if e.key in CONV_OPS)
    return conv / 1e6, sum(e.self_cpu_time_total for e in ev) / 1e6


def import_official(path: Path, device: str):
    """The official ``MRFA`` class and vox1 config dict (``.cuda()`` made a no-op on CPU)."""
    import torch
    import yaml

    if not (path / "modules" / "model.py").is_file():
        raise FileNotFoundError(f"--official {path}: not a checkout of JialeTao/MRFA (modules/model.py missing)")
    try:
        import einops  # noqa: F401
    except ImportError as e:
        raise SystemExit("the official MRFA code needs einops: pip install einops") from e
    shim = []
    try:
        from timm.models.layers.weight_init import trunc_normal_  # noqa: F401
    except ImportError:   # timm absent (or ≥ 1.0 without the old path): the official code only uses trunc_normal_
        for name in ("timm", "timm.models", "timm.models.layers", "timm.models.layers.weight_init"):
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                shim.append(name)
        sys.modules["timm.models.layers.weight_init"].trunc_normal_ = torch.nn.init.trunc_normal_
    if device == "cpu":
        torch.nn.Module.cuda = lambda self, *a, **k: self
    import torchvision

    orig = torchvision.models.vgg19

    def vgg19(pretrained=False, **kw):     # the official Vgg19 asks for ImageNet weights: use them only if cached
        try:
            return orig(weights="IMAGENET1K_V1") if pretrained and _vgg_cached() else orig(weights=None)
        except Exception:
            return orig(weights=None)

    torchvision.models.vgg19 = vgg19
    sys.path.insert(0, str(path))
    from modules.model import MRFA as OfficialMRFA

    for name in shim:      # the official modules hold their trunc_normal_; do not leave a fake timm behind
        del sys.modules[name]
    cfg = yaml.safe_load((path / "config" / "vox1.yaml").read_text())
    return OfficialMRFA, cfg


def _vgg_cached() -> bool:
    from lit_models.common.perceptual import vgg19_weights_path

    try:
        vgg19_weights_path(None)
        return True
    except FileNotFoundError:
        return False


def _attr(d):
    class A(dict):
        __getattr__ = dict.__getitem__

    return A({k: _attr(v) if isinstance(v, dict) else v for k, v in d.items()})


def official_config(cfg: dict, res: int, prior_only: bool) -> dict:
    c = copy.deepcopy(cfg)
    c["dataset_params"]["frame_shape"] = [res, res, 3]
    c["raft_flow"]["size"] = res
    c["raft_flow"]["prior_only"] = prior_only
    m = c["mtia_kp_detector"]["MODEL"]
    m["IMAGE_SIZE"] = [res, res]
    m["HEATMAP_SIZE"] = [res // 4, res // 4]
    return c


def build_pair(Official, cfg: dict, res: int, K: int, device: str, overrides=()):
    """(official model, our model with its weights, label of the VGG used)."""
    import torch
    from omegaconf import OmegaConf

    from lit_models.common.perceptual import MultiScalePerceptualLoss, VGG19Features
    from lit_models.mrfa import MRFA
    from lit_models.common.warp import AntiAliasInterpolation2d
    from lit_models.mrfa.import_official import infer_sizes, normalise_state_dict

    torch.manual_seed(0)
    c = official_config(cfg, res, prior_only=K == 0)
    off = Official(_attr(c)).to(device)
    sd, _ = normalise_state_dict(off.state_dict())
    sizes = infer_sizes(sd) if K else None
    from lit_models.mrfa.import_official import sizes_from_official_yaml  # noqa: F401
    from lit_models.mrfa.config import MRFAConfig

    ours_cfg = OmegaConf.merge(OmegaConf.structured(MRFAConfig),
                               sizes or {"resolution": res, "refine_iters": 0},
                               {"mtia": {"heads": c["mtia_kp_detector"]["MODEL"]["TRANSFORMER_HEADS"]},
                                "perceptual": "pyramid_l1_ssim"}, OmegaConf.from_dotlist(list(overrides)))
    ours = MRFA(ours_cfg).to(device)
    ours.load_state_dict(sd, strict=True)
    # the same frozen VGG-19 (the official one's weights) and the official 4-scale pyramid in our loss
    loss = MultiScalePerceptualLoss("pyramid_l1_ssim", [1, 0.5, 0.25, 0.125], [10] * 5,
                                    pyramid=lambda s: AntiAliasInterpolation2d(3, s))   # the official ImagePyramide
    loss.backend = "vgg19"
    import torchvision

    net = torchvision.models.vgg19(weights=None)
    src = [m for s in (off.vgg.slice1, off.vgg.slice2, off.vgg.slice3, off.vgg.slice4, off.vgg.slice5)
           for m in s]
    for i, m in enumerate(src):
        net.features[i] = m
    loss.vgg = VGG19Features(net=net)
    ours._perceptual.append(loss.to(device))
    return off, ours, "vgg19 (ImageNet)" if _vgg_cached() else "vgg19 (random weights, timing only)"


def step_official(model, opt, x, clip=10.0):
    import math

    import torch

    opt.zero_grad(set_to_none=True)
    _, _, losses, _, _ = model(x, epoch=100, is_train=True)
    loss = sum(v.mean() for v in losses.values())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), max_norm=clip, norm_type=math.inf)
    torch.nn.utils.clip_grad_norm_(model.dense_motion.parameters(), max_norm=clip, norm_type=math.inf)
    opt.step()
    return float(loss.detach())


def _autocast(device_type: str, dtype=None):
    """``torch.autocast(device_type, dtype)``, or no context when ``dtype`` is None (fp32, the official precision)."""
    import torch

    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def step_ours(model, opt, x, autocast=None):
    opt.zero_grad(set_to_none=True)
    b = {"source": x["source"], "driving": x["driving"][:, None]}
    with _autocast(x["source"].device.type, autocast):
        loss = model.weighted_total(model.compute_losses(b))
    loss.backward()
    model.configure_gradient_clipping(opt)
    opt.step()
    return float(loss.detach())


def first_losses(off, ours, x, autocast=None):
    """The two training losses (official: the sum of its loss dict; ours: ``weighted_total``) of one forward on
    the same weights, each after ``torch.manual_seed(0)`` so that the equivariance transform draws the same random
    numbers in both (official ``torch.normal`` and our ``torch.randn``-based transform consume the generator alike):
    equal up to float rounding when the two compute the same loss terms with the same weights."""
    import torch

    torch.manual_seed(0)                 # (with autograd on: the equivariance transform's Jacobian uses it)
    _, _, losses, _, _ = off(x, epoch=100, is_train=True)
    torch.manual_seed(0)
    with _autocast(x["source"].device.type, autocast):
        ours_loss = ours.weighted_total(ours.compute_losses({"source": x["source"], "driving": x["driving"][:, None]}))
    return float(sum(v.mean() for v in losses.values())), float(ours_loss)


def timed(fn, device):
    """(wall s, process CPU s) of ``fn()``; no memory sampling (its thread and the heap trim perturb timing)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c


def peak_memory(fn, device) -> float:
    """Peak memory of ``fn()`` in GiB (CUDA: ``max_memory_allocated``; CPU: peak RSS above the start)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 30
    with PeakRSS() as m:
        fn()
    return m.gib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mrfa", description=__doc__.split("\n")[0])
    ap.add_argument("--official", default=os.environ.get("MRFA_OFFICIAL"),
                    help="checkout of JialeTao/MRFA (default: $MRFA_OFFICIAL); without it the benchmark is skipped")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--ks", type=int, nargs="+", default=[6, 0], help="refinement steps to time (6 and/or 0)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per model (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") != "" else "cpu")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of our model config (e.g. checkpoint_refiner=true optimizer.fused=null)")
    ap.add_argument("--autocast", choices=["bf16", "fp16"],
                    help="run OUR step under torch.autocast at this dtype (the official step stays fp32): outputs are "
                         "then NOT identical, the table says so and prints the prediction difference under autocast")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one step of each and print the seconds spent in convolutions: the floor of "
                         "ours/official for any implementation that computes the same convolutions")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        a.device = "cpu"
    torch.set_num_threads(a.threads)
    if not a.official:
        print("skipped: pass --official PATH (a checkout of JialeTao/MRFA) or set MRFA_OFFICIAL")
        return 0
    path = Path(a.official)
    if not path.is_dir():
        print(f"skipped: --official {path} does not exist (a checkout of JialeTao/MRFA)")
        return 0
    if a.profile and a.device.startswith("cuda"):
        raise SystemExit("--profile sums CPU op time (the floor on this CPU); on CUDA use torch.profiler's device times")
    if any(k not in (0, 6) for k in a.ks):
        raise SystemExit("--ks: the official code has K = 6 and K = 0 (prior_only) without editing it")
    Official, cfg = import_official(path, a.device)
    cast = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[a.autocast]
    rows = []
    for K in a.ks:
        off, ours, label = build_pair(Official, cfg, a.res, K, a.device, a.set)
        g = torch.Generator().manual_seed(0)
        x = {"source": torch.rand(a.batch, 3, a.res, a.res, generator=g).to(a.device),
             "driving": torch.rand(a.batch, 3, a.res, a.res, generator=g).to(a.device)}
        off.eval(), ours.eval()
        with torch.no_grad():
            p_off = off(x, is_train=False)[0]
        with torch.no_grad(), _autocast(a.device.split(":")[0], cast):
            p_ours = ours.generate(x["source"], ours.encoder(x["source"]), ours.encoder(x["driving"]))["prediction"]
        diff = (p_off.float() - p_ours.float()).abs().max().item()
        off.train(), ours.train()
        loss_off, loss_ours = first_losses(off, ours, x, cast)
        opt_off = torch.optim.Adam(list(off.encoder.parameters()) + list(off.decoder.parameters())
                                   + list(off.dense_motion.parameters()), lr=2e-4, betas=(0.5, 0.999))
        opt_ours = ours.configure_optimizers()
        t_off, t_ours, c_off, c_ours = [], [], [], []
        for r in range(a.repeats + 1):        # interleaved; r = 0 warms up both
            dt, dc = timed(lambda: step_official(off, opt_off, x), a.device)
            if r:
                t_off.append(dt), c_off.append(dc)
            dt, dc = timed(lambda: step_ours(ours, opt_ours, x, cast), a.device)
            if r:
                t_ours.append(dt), c_ours.append(dc)
        m_off, m_ours, tm_off, tm_ours = [], [], [], []
        for _ in range(2):                    # memory: separate steps (the sampler would perturb the timing)
            m_off.append(peak_memory(lambda: step_official(off, opt_off, x), a.device))
            m_ours.append(peak_memory(lambda: step_ours(ours, opt_ours, x, cast), a.device))
            if a.device == "cpu":             # live tensors, the CPU analogue of max_memory_allocated
                tm_off.append(peak_tensor_gib(lambda: step_official(off, opt_off, x)))
                tm_ours.append(peak_tensor_gib(lambda: step_ours(ours, opt_ours, x, cast)))
        row = {"K": K, "res": a.res, "batch": a.batch, "device": a.device, "threads": a.threads, "loss": label,
               "pred_max_abs_diff": diff, "official_s": statistics.median(t_off), "ours_s": statistics.median(t_ours),
               "official_peak_GiB": max(m_off), "ours_peak_GiB": max(m_ours),
               "official_all_s": t_off, "ours_all_s": t_ours, "ours_overrides": list(a.set),
               "official_cpu_s": statistics.median(c_off), "ours_cpu_s": statistics.median(c_ours),
               "ours_autocast": a.autocast, "official_loss": loss_off, "ours_loss": loss_ours,
               "loss_rel_diff": abs(loss_ours - loss_off) / max(abs(loss_off), 1e-12)}
        if tm_off:
            row.update(official_tensor_GiB=max(tm_off), ours_tensor_GiB=max(tm_ours),
                       tensor_mem_ratio=max(tm_ours) / max(max(tm_off), 1e-9))
        if a.profile:
            (co, to), (cu, tu) = conv_seconds(lambda: step_official(off, opt_off, x)), \
                conv_seconds(lambda: step_ours(ours, opt_ours, x, cast))
            row.update(official_conv_s=co, official_ops_s=to, ours_conv_s=cu, ours_ops_s=tu)
        row["cpu_time_ratio"] = row["ours_cpu_s"] / row["official_cpu_s"]
        row["time_ratio"] = row["ours_s"] / row["official_s"]
        row["mem_ratio"] = row["ours_peak_GiB"] / max(row["official_peak_GiB"], 1e-9)
        rows.append(row)
        off = ours = opt_off = opt_ours = None   # free both models before the next K
    cpu = not a.device.startswith("cuda")
    mem_kind = ("peak RSS above the step's start; tensors: peak live-tensor bytes above the step's start (profiler "
                "allocation events)") if cpu else "max_memory_allocated"
    print(f"MRFA training step, official vs ours, same run, interleaved; {a.res}², batch {a.batch}, {a.device}"
          f"{f', {a.threads} threads' if cpu else ''}, median of {a.repeats}; loss: "
          f"{rows[0]['loss']} pyramid ×4 + equivariance ×2; memory: {mem_kind}"
          f"{'; ours with ' + ' '.join(a.set) if a.set else ''}")
    if a.autocast:
        print(f"OURS RUNS UNDER {a.autocast} AUTOCAST, THE OFFICIAL STEP IN fp32: outputs are NOT identical "
              f"(the last column is ours under autocast against the official fp32 prediction)")
    tensors = cpu and "tensor_mem_ratio" in rows[0]
    print("| K | official s | ours s | ours/official | CPU-time ours/official | official GiB | ours GiB | "
          "ours/official |" + (" official tensors GiB | ours tensors GiB | ours/official |" if tensors else "")
          + " pred max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if tensors else ""))
    for r in rows:
        print(f"| {r['K']} | {r['official_s']:.3f} | {r['ours_s']:.3f} | {r['time_ratio']:.2f} | "
              f"{r['cpu_time_ratio']:.2f} | {r['official_peak_GiB']:.2f} | {r['ours_peak_GiB']:.2f} | "
              f"{r['mem_ratio']:.2f} |" + (f" {r['official_tensor_GiB']:.2f} | {r['ours_tensor_GiB']:.2f} | "
                                           f"{r['tensor_mem_ratio']:.2f} |" if tensors else "")
              + f" {r['pred_max_abs_diff']:.2e} |")
    for r in rows:
        print(f"K = {r['K']}: first-step training loss official {r['official_loss']:.6g}, ours {r['ours_loss']:.6g} "
              f"(relative difference {r['loss_rel_diff']:.1e}; same seed for the equivariance transform)")
    if a.profile:
        print("\nConvolutions (forward + backward kernels) in one profiled step; the floor is ours' convolution "
              "time over the official step's op time: no implementation computing these convolutions goes below it")
        print("| K | official conv s / all ops s | share | ours conv s / all ops s | share | floor ours/official |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['K']} | {r['official_conv_s']:.2f} / {r['official_ops_s']:.2f} | "
                  f"{r['official_conv_s'] / r['official_ops_s']:.2f} | {r['ours_conv_s']:.2f} / {r['ours_ops_s']:.2f}"
                  f" | {r['ours_conv_s'] / r['ours_ops_s']:.2f} | {r['ours_conv_s'] / r['official_ops_s']:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
