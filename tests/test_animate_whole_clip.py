"""The animate contract: the whole clip in ONE ``animate`` call with one seeded generator (no per-chunk re-seeding),
``device=`` and ``sampling.precision=`` on animate / evaluate, both recorded."""
from __future__ import annotations

import json

import pytest
import torch

SHRINK = ["model.resolution=32", "model.unet.sample_size=8", "model.num_inference_steps=1"]


def tiny_xportrait(*overrides):
    from experiments.compose import compose
    from lit_models.registry import build_model

    torch.manual_seed(0)
    m = build_model(compose("train", ["model=xportrait_tiny", *SHRINK, *overrides]).model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():      # zero-initialised branches made to matter: ControlNets and temporal layers
        for name, p in sorted(m.named_parameters()):
            if any(k in name for k in ("controlnet_down_blocks", "controlnet_mid_block", "cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            if "motion_modules" in name and "proj_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


class Spy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def animate(self, source, driving, *, generator=None):
        self.calls.append((driving.shape, generator))
        return driving


def test_run_animation_calls_animate_once_with_the_whole_clip():
    from experiments.animate import run_animation

    spy, gen = Spy(), torch.Generator().manual_seed(3)
    driving = torch.rand(40, 3, 8, 8)
    out = run_animation(spy, driving[0], driving, relative=False, progress=False, generator=gen)
    assert len(spy.calls) == 1 and spy.calls[0][0] == (1, 40, 3, 8, 8) and spy.calls[0][1] is gen
    torch.testing.assert_close(out, driving)


def test_whole_clip_has_no_repeated_noise_and_is_reproducible():
    """A still driving clip of 20 frames, windows of 8: in one trajectory frames t and t + 8 are different samples
    (per-chunk sampling under one seed makes them the same sample), and the same seed gives the same video."""
    m = tiny_xportrait()
    src = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    drv = src[:, None].expand(1, 20, 3, 32, 32).contiguous()
    a = m.animate(src, drv, generator=torch.Generator().manual_seed(5))
    b = m.animate(src, drv, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = m.animate(src, drv, generator=torch.Generator().manual_seed(6))
    assert (a - c).abs().max() > 1e-3
    # frames 8 apart: independent samples (sampling chunk by chunk gives identical ones)
    assert (a[:, 8:16] - a[:, 0:8]).abs().mean() > 1e-2
    chunked = torch.cat([m.animate(src, drv[:, s:s + 8], generator=torch.Generator().manual_seed(5))
                         for s in range(0, 16, 8)], 1)
    assert (chunked[:, 8:16] - chunked[:, 0:8]).abs().max() < 1e-5       # what per-chunk seeding produces
    assert (a[:, :16] - chunked).abs().mean() > 1e-2


def test_device_cuda_without_cuda_fails_at_once(compose_cfg, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    from experiments.animate import animate
    from lit_models.base import resolve_device

    cfg = compose_cfg("animate", ["model=copy_source", "source=a.png", "driving=b.mp4", f"out={tmp_path / 'o.mp4'}",
                                  "device=cuda"])
    from experiments.runtime import ConfigError

    with pytest.raises(ConfigError) as err:
        animate(cfg)                    # before reading a.png (which does not exist)
    msg = str(err.value)
    assert "CUDA" in msg and "\n" not in msg
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")


def test_precision_rules():
    from lit_models.base import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    m = tiny_xportrait()
    assert resolve_precision("auto", cpu, m) == "fp32" and resolve_precision("auto", cuda, m) == "fp16"
    assert resolve_precision("auto", cuda, Spy()) == "fp32"          # no official precision: fp32
    assert resolve_precision("bf16", cpu, m) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        resolve_precision("fp16", cpu, m)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", cpu, m)


def test_bf16_autocast_runs_the_unet_in_bf16_on_cpu():
    from experiments.animate import run_animation

    m = tiny_xportrait()
    seen = []
    conv = m.denoiser.conv_in if hasattr(m.denoiser, "conv_in") else next(
        mod for mod in m.denoiser.modules() if isinstance(mod, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    drv = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    try:
        full = run_animation(m, drv[0], drv, relative=False, progress=False,
                             generator=torch.Generator().manual_seed(0), precision="fp32")
        assert set(seen) == {torch.float32}
        seen.clear()
        half = run_animation(m, drv[0], drv, relative=False, progress=False,
                             generator=torch.Generator().manual_seed(0), precision="bf16")
        assert set(seen) == {torch.bfloat16}
    finally:
        hook.remove()
    assert half.dtype == torch.float32
    diff = (half - full).abs().max()
    assert 0 < diff < 0.25


class TinyEvalData:
    """Two 4-frame clips at 32² (the runner's ``eval_dataset`` interface)."""

    def eval_dataset(self, split, mode, num_frames, stride, max_videos, pairs_csv):
        for i in range(2):
            g = torch.Generator().manual_seed(i)
            frames = torch.rand(4, 3, 32, 32, generator=g)
            yield {"source": frames[0], "driving": frames, "target": frames,
                   "meta": {"video_id": f"v{i}", "frame_indices": list(range(4))}}


def test_metrics_json_records_device_dtype_and_precision(tmp_path):
    from eval.protocol import load_protocol
    from eval.runner import run_evaluation

    m = tiny_xportrait("model.use_local_control=false")
    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "batch_size=1", "metrics=[l1]"])
    res = run_evaluation(m, TinyEvalData(), proto, tmp_path / "bf16", progress=False, precision="bf16", seed=1)
    on_disk = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert (on_disk["device"], on_disk["dtype"], on_disk["precision"]) == ("cpu", "float32", "bf16")
    again = run_evaluation(m, TinyEvalData(), proto, tmp_path / "again", progress=False, precision="bf16", seed=1)
    assert again["metrics"]["l1"] == res["metrics"]["l1"]            # one generator per clip, seeded: reproducible
    fp32 = run_evaluation(m, TinyEvalData(), proto, tmp_path / "fp32", progress=False, seed=1)
    assert fp32["precision"] == "fp32" and fp32["metrics"]["l1"] != res["metrics"]["l1"]


class PatchSpy(torch.nn.Module):
    """A model with X-Portrait's contract: landmark-centred local control, an official preprocessing."""

    official_preprocess = "xportrait"

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.cfg = type("C", (), {"use_local_control": True, "resolution": 32})()
        self.calls = []

    def animate(self, source, driving, *, generator=None, keypoints=None, patch_centres=None):
        self.calls.append({"keypoints": keypoints, "patch_centres": patch_centres, "generator": generator})
        return driving


def test_evaluation_places_the_patches_as_animate_does(tmp_path, monkeypatch):
    """preprocess=official: FAN's patch centres (here a stand-in detector) reach animate; metrics.json says so.
    Without FAN's weights the evaluation fails before the first video, naming the files."""
    import numpy as np

    import datamodules.preprocess.xportrait as pre
    from eval.protocol import load_protocol
    from eval.runner import run_evaluation

    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "batch_size=1", "metrics=[l1]"])
    spy = PatchSpy()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="2DFAN4"):
        run_evaluation(spy, TinyEvalData(), proto, tmp_path / "nofan", progress=False, preprocess="official")
    assert spy.calls == []
    seen = []

    def stand_in(img):
        seen.append(img.shape)
        lm = np.zeros((68, 2), np.float32)
        lm[36:48] = (100, 90)
        lm[48:68] = (128, 180)
        return lm

    monkeypatch.setattr(pre, "fan_detector", lambda device="cpu": stand_in)
    res = run_evaluation(spy, TinyEvalData(), proto, tmp_path / "fan", progress=False, preprocess="official")
    assert res["local_landmarks"] == "fan" and seen and set(seen) == {(256, 256, 3)}
    pc = spy.calls[0]["patch_centres"]
    assert pc.shape == (1, 4, 3, 2) and spy.calls[0]["keypoints"] is None
    # official centres on the 256² grid (rounded, clipped to [32, 223]) scaled to the 32² frame
    assert pc[0, 0].tolist() == [[12.0, 11.0], [12.0, 11.0], [16.0, 22.0]]
    assert isinstance(spy.calls[0]["generator"], torch.Generator)


def test_mrfa_cross_identity_evaluation_uses_the_official_relative_motion():
    """Official animate_ddp.py (vox1.yaml animate_params): relative keypoints + jacobians, no adapt_scale, w.r.t.
    the driving clip's first frame; self-reenactment keeps absolute keypoints."""
    from eval.runner import animate_at_model_resolution
    from experiments.compose import compose
    from lit_models.registry import build_model

    torch.manual_seed(0)
    m = build_model(compose("train", ["model=mrfa_tiny"]).model).eval()
    assert m.cross_identity_animate_kwargs() == {"relative": True, "adapt_movement_scale": False}
    r = int(m.cfg.resolution)
    g = torch.Generator().manual_seed(0)
    src, drv = torch.rand(1, 3, r, r, generator=g), torch.rand(1, 3, 3, r, r, generator=g)
    _, _, cross = animate_at_model_resolution(m, src, drv, r, "bilinear", r, cross=True)
    _, _, self_ = animate_at_model_resolution(m, src, drv, r, "bilinear", r, cross=False)
    with torch.no_grad():
        torch.testing.assert_close(cross, m.animate(src, drv, relative=True, adapt_movement_scale=False))
        torch.testing.assert_close(self_, m.animate(src, drv))
    assert (cross - self_).abs().max() > 1e-5


def test_animate_cli_runs_the_official_xportrait_preprocessing(compose_cfg, real_fixtures, tmp_path, monkeypatch):
    """preprocess=auto on X-Portrait: the full-frame 512² source and aligned driving reach ``animate`` with the
    official patch centres (FAN replaced by a fixed-landmark stand-in here); without FAN's weights it fails at once
    naming them."""
    import functools

    import numpy as np

    import datamodules.preprocess.xportrait as pre
    from experiments.animate import animate
    from experiments.runtime import ConfigError
    from experiments.train import save_untrained_checkpoint
    from lit_models.xportrait import XPortrait

    ckpt = save_untrained_checkpoint(tiny_xportrait(), tmp_path / "x.ckpt")
    args = [f"ckpt={ckpt}", f"source={real_fixtures / 'portraits/single_face.jpg'}",
            f"driving={real_fixtures / 'clips/talkinghead1kh_r0c0.mp4'}", f"out={tmp_path / 'o.mp4'}",
            "max_frames=3", f"run_dir={tmp_path}"]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="s3fd-619a316812.pth"):
        animate(compose_cfg("animate", args))

    lm = np.zeros((68, 2), np.float32)
    lm[:, 0] = np.linspace(60, 200, 68)
    lm[:, 1] = np.linspace(50, 210, 68)
    monkeypatch.setattr(pre, "fan_detector", lambda device="cpu": (lambda img: lm))
    seen = {}
    real = XPortrait.animate

    @functools.wraps(real)          # the real signature: callers pass only the keywords it names
    def spy(self, source, driving, **kw):
        seen.update(source=source.shape, driving=driving.shape, **kw)
        return real(self, source, driving, **kw)

    monkeypatch.setattr(XPortrait, "animate", spy)
    animate(compose_cfg("animate", args))
    assert seen["source"] == (1, 3, 512, 512) and seen["driving"] == (1, 3, 3, 512, 512)
    pc = seen["patch_centres"]
    want = [np.clip(np.round(lm[sl].mean(0)), 32, 223) * 2 for sl in (slice(43, 48), slice(37, 42), slice(49, 68))]
    assert pc.shape == (1, 3, 3, 2) and (pc[0] == torch.tensor(np.stack(want))).all()
    assert "keypoints" not in seen and isinstance(seen["generator"], torch.Generator)
