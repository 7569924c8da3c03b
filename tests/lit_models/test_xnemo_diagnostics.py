"""Motion sensitivity (lit_models.xnemo.diagnostics): reference values on stub models that copy the driver or the
source, and on X-NeMo tiny, where cutting the motion tokens makes the output independent of the driving clip."""
from __future__ import annotations

import pytest
import torch

from lit_models.xnemo.diagnostics import motion_sensitivity, probe_sensitivity, synth_probe


class CopyDriver:
    def animate(self, source, driving):
        return driving.clone()


class CopySource:
    def animate(self, source, driving):
        return source[:, None].expand_as(driving).clone()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)   # noqa: E731
    return r(2, 3, 8, 8), r(2, 3, 3, 8, 8), r(2, 3, 3, 8, 8), r(2, 3, 8, 8)


def test_sensitivity_reference_values_on_stub_models():
    sa, da, db, sb = _data()
    drv = motion_sensitivity(CopyDriver(), sa, da, db, sb)
    assert drv["motion"] == pytest.approx(float((da - db).abs().mean())) and drv["source"] == 0.0
    src = motion_sensitivity(CopySource(), sa, da, db, sb)
    assert src["motion"] == 0.0 and src["ratio"] == 0.0
    assert src["source"] == pytest.approx(float((sa - sb).abs().mean()))
    # with ground truth: a driver-copier on A's own clips transfers all the motion (gain 1) and none of the source
    truth = {"Aa": da, "Ab": db, "Ba": da + 0.1}
    g = motion_sensitivity(CopyDriver(), sa, da, db, sb, truth=truth)
    assert g["motion_gain"] == pytest.approx(1.0) and g["source_gain"] == 0.0 and g["l1_Aa"] == 0.0
    assert g["motion_alignment"] == pytest.approx(1.0)
    # a model that moves the wrong way (the truth's change reversed) has alignment −1 at the same gain
    rev = motion_sensitivity(CopyDriver(), sa, db, da, sb, truth=truth)
    assert rev["motion_alignment"] == pytest.approx(-1.0) and rev["motion_gain"] == pytest.approx(1.0)


def test_probe_clips_differ_in_motion_only_within_an_identity():
    p = synth_probe(num_pairs=2, num_frames=2, resolution=32, seed=1)
    assert p["Aa"].shape == (2, 2, 3, 32, 32) and p["src_A"].shape == (2, 3, 32, 32)
    motion = (p["Aa"] - p["Ab"]).abs().mean()
    identity = (p["Aa"] - p["Ba"]).abs().mean()
    assert 0 < motion < identity


@pytest.fixture(scope="module")
def tiny_xnemo():
    from experiments.compose import compose
    from lit_models.registry import build_model

    torch.manual_seed(0)
    shrink = ["model.resolution=32", "model.unet.sample_size=8", "model.motion_encoder_resolution=16",
              "model.motion_encoder_channels=[8,16]", "model.num_inference_steps=1", "model.motion_dim=32"]
    model = build_model(compose("train", ["model=xnemo_tiny", *shrink]).model)
    # the motion cross-attention modules start as exact no-ops (zero output projections): give them random ones,
    # as after training, so the driving clip can reach the output
    from lit_models.diffusion.motion_cross_attention import MotionThenTemporal

    g = torch.Generator().manual_seed(0)
    for m in model.denoiser.modules():
        if isinstance(m, MotionThenTemporal):
            w = m.motion.transformer.proj_out.weight
            w.data.copy_(torch.randn(w.shape, generator=g) * 0.2)
    return model


def test_xnemo_sensitivity_vanishes_when_motion_tokens_are_cut(tiny_xnemo, monkeypatch):
    model = tiny_xnemo
    p = synth_probe(num_pairs=1, num_frames=2, resolution=32, seed=2)
    on = probe_sensitivity(model, p)
    assert on["motion"] > 0 and on["source"] > 0
    real = model.encode_motion
    monkeypatch.setattr(model, "encode_motion",
                        lambda source, driving, keep, *a, **k: real(source, driving, torch.zeros_like(keep), *a, **k))
    off = probe_sensitivity(model, p)
    assert off["motion"] == 0.0 and off["source"] > 0


def test_run_diagnostics_follow_the_synthfaces_config(tiny_xnemo):
    """`XNeMo.eval_diagnostics` (merged into a run's metrics.json): the probe is rendered like the datamodule's
    SynthFaces (resolution, motion_scale) and the gains are the probe's; nothing for data without SynthFaces."""
    from types import SimpleNamespace

    from lit_models.xnemo.diagnostics import synthfaces_diagnostics

    assert tiny_xnemo.eval_diagnostics(SimpleNamespace(cfg=SimpleNamespace(synth=None)), None) == {}
    dm = SimpleNamespace(cfg=SimpleNamespace(synth={"resolution": 32, "motion_scale": 2.0}))
    res = synthfaces_diagnostics(tiny_xnemo, dm, num_pairs=1, num_frames=2, seed=3)
    want = probe_sensitivity(tiny_xnemo, synth_probe(1, 2, 32, 2.0, seed=3))
    assert res == {"motion_gain": want["motion_gain"], "motion_alignment": want["motion_alignment"],
                   "source_gain": want["source_gain"], "motion_ratio": want["ratio"]}
    assert res["motion_gain"] > 0
    other = synthfaces_diagnostics(tiny_xnemo, SimpleNamespace(cfg=SimpleNamespace(synth={"resolution": 32})),
                                   num_pairs=1, num_frames=2, seed=3)
    assert other["motion_gain"] != res["motion_gain"]   # motion_scale 1 renders other probe clips


def test_sensitivity_cli_takes_run_or_sweep_directories(tmp_path):
    """`python -m benchmarks.diffusion --sensitivity`: a sweep directory expands to its runs (wandb/ and other
    non-run folders skipped); a folder with no run is an error naming it."""
    from benchmarks.diffusion import expand_runs

    sweep = tmp_path / "sweep"
    for name in ("1_b", "0_a"):
        (sweep / name / "checkpoints").mkdir(parents=True)
        (sweep / name / "config.yaml").write_text("model: {}\n")
        (sweep / name / "checkpoints" / "last.ckpt").write_bytes(b"")
    (sweep / "wandb" / "run-x").mkdir(parents=True)
    (sweep / "2_unfinished").mkdir()
    assert expand_runs([sweep]) == [sweep / "0_a", sweep / "1_b"]
    assert expand_runs([sweep / "1_b", sweep / "wandb"]) == [sweep / "1_b"]
    with pytest.raises(FileNotFoundError, match="2_unfinished"):
        expand_runs([sweep / "2_unfinished"])
