"""Eval-side probes (eval.probes). X-NeMo's motion sensitivity (eval.probes.xnemo, moved from
lit_models/xnemo/diagnostics.py): reference values on stub models that copy the driver or the source, and on X-NeMo
tiny, where cutting the motion tokens makes the output independent of the driving clip. The registry: probes run for
their methods only, declare every metric they return, and their declared directions are what tables read."""
from __future__ import annotations

import pytest
import torch

from eval.probes.xnemo import motion_sensitivity, probe_sensitivity, synth_probe


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


def test_run_probes_follow_the_synthfaces_config(tiny_xnemo):
    """`run_probes` (merged into a run's metrics.json by the entry point): the X-NeMo probe is rendered like the
    datamodule's SynthFaces (resolution, motion_scale) and the gains are the probe's; nothing for data without
    SynthFaces."""
    from types import SimpleNamespace

    from eval.probes import probe_source, run_probes
    from eval.probes.xnemo import synthfaces_diagnostics

    assert probe_source(tiny_xnemo) == "eval.probes: xnemo.motion_sensitivity"
    assert run_probes(tiny_xnemo, SimpleNamespace(cfg=SimpleNamespace(synth=None)), None) == {}
    dm = SimpleNamespace(cfg=SimpleNamespace(synth={"resolution": 32, "motion_scale": 2.0}))
    res = synthfaces_diagnostics(tiny_xnemo, dm, num_pairs=1, num_frames=2, seed=3)
    want = probe_sensitivity(tiny_xnemo, synth_probe(1, 2, 32, 2.0, seed=3))
    assert res == {"motion_gain": want["motion_gain"], "motion_alignment": want["motion_alignment"],
                   "source_gain": want["source_gain"], "motion_ratio": want["ratio"]}
    assert res["motion_gain"] > 0
    other = synthfaces_diagnostics(tiny_xnemo, SimpleNamespace(cfg=SimpleNamespace(synth={"resolution": 32})),
                                   num_pairs=1, num_frames=2, seed=3)
    assert other["motion_gain"] != res["motion_gain"]   # motion_scale 1 renders other probe clips


def test_run_probes_labels_standin_models_and_runs_only_for_their_method(tiny_xnemo, monkeypatch):
    """The probe's default set (4 pairs × 4 frames, seed 12345) through `run_probes`; a model whose output depends on
    a stand-in CLIP gets every key as `<name>_STANDIN` (same values); a model of another method gets nothing."""
    from types import SimpleNamespace

    from eval.probes import run_probes
    from eval.probes.xnemo import synthfaces_diagnostics

    dm = SimpleNamespace(cfg=SimpleNamespace(synth={"resolution": 32, "motion_scale": 1.0}))
    calls = []
    monkeypatch.setattr("eval.probes.xnemo.synthfaces_diagnostics",
                        lambda m, d, **k: calls.append((m, d, k)) or synthfaces_diagnostics(m, d, 1, 2, 5))
    plain = run_probes(tiny_xnemo, dm, None)
    assert calls == [(tiny_xnemo, dm, {})] and sorted(plain) == ["motion_alignment", "motion_gain", "motion_ratio",
                                                               "source_gain"]
    assert not tiny_xnemo.standin_output
    monkeypatch.setattr(type(tiny_xnemo), "standin_output", property(lambda self: True))
    assert run_probes(tiny_xnemo, dm, None) == {f"{k}_STANDIN": v for k, v in plain.items()}
    other = SimpleNamespace(cfg={"name": "xnemo", "_target_": "lit_models.baselines.DirectRegression"},
                            animate=tiny_xnemo.animate)
    assert run_probes(other, dm, None) == {} and len(calls) == 2


def test_mrfa_probe_calls_the_models_networks_under_its_declared_names(monkeypatch):
    """The MRFA probe builds the self-test stream itself and calls only the model's networks (``kp_detector``,
    ``generate``): a fake model whose motion is the identity grid gives motion_err_prior = _refined = _zero, shift 0;
    a probe returning a name it does not declare is an error naming it."""
    import torch
    from omegaconf import OmegaConf

    from eval.probes import PROBES, run_probes
    from lit_models.common.warp import make_coordinate_grid

    class FakeMRFA(torch.nn.Module):
        cfg = OmegaConf.create({"name": "mrfa_tiny", "_target_": "lit_models.mrfa.MRFA"})
        bg_predictor = None

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def kp_detector(self, x):
            return {"value": torch.zeros(x.shape[0], 5, 2)}

        def generate(self, src, kps, kpd, bg, refine_iters=None):
            g = make_coordinate_grid(src.shape[-2], src.shape[-1])[None].expand(src.shape[0], -1, -1, -1)
            return {"prior_deformation": g, "deformation": g}

    class DM:
        def eval_dataset(self, **kw):
            g = torch.Generator().manual_seed(0)
            return [{"source": torch.rand(3, 16, 16, generator=g), "driving": torch.rand(3, 3, 16, 16, generator=g),
                     "keypoints": 2 + torch.rand(3, 4, 2, generator=g) * 12}]

    proto = OmegaConf.create({"mode": "self", "split": "test", "num_frames": 3, "stride": 1, "max_videos": 0})
    m = FakeMRFA().train()
    res = run_probes(m, DM(), proto)
    kp = DM().eval_dataset()[0]["keypoints"]
    zero = float((kp[1:] - kp[0]).norm(dim=-1).mean())
    assert res["motion_err_zero"] == pytest.approx(zero, rel=1e-6)
    assert res["motion_err_prior"] == pytest.approx(zero, rel=1e-4) == res["motion_err_refined"]
    assert res["refine_shift"] == pytest.approx(0.0, abs=1e-6) and m.training
    probe = PROBES["mrfa.keypoint_motion"]
    bad = type(probe)(name="bad", methods=probe.methods, directions={}, run=lambda *a: {"kp_err": 1.0})
    monkeypatch.setitem(PROBES, "bad", bad)
    with pytest.raises(ValueError, match=r"bad.*'kp_err'"):
        run_probes(m, DM(), proto)


# the ranking direction of each probe and metric column (True: higher is better, False: lower, None: not ranked)
DIRECTIONS = {"motion_err_prior": False, "motion_err_refined": False, "motion_err_zero": None,
                  "refine_shift": None, "motion_gain": None, "source_gain": None, "motion_ratio": None,
                  "motion_alignment": True, "motion_gain_STANDIN": None, "motion_alignment_STANDIN": True,
                  "synthfaces_cross/motion_err_prior": False,
                  "l1": False, "psnr": True, "akd_synthlm": False, "id_leakage_dlib": False, "contact_rate": None,
                  "nonfinite_frames": None, "kp_motion_err_prior": None}


def test_directions_come_from_probe_declarations(monkeypatch):
    from eval.metrics import higher_is_better
    from eval.probes import PROBES, Probe, declared_direction, register_probe

    assert {m: higher_is_better(m) for m in DIRECTIONS} == DIRECTIONS
    from eval.metrics import STANDIN_SUFFIX
    from eval.probes.base import STANDIN_SUFFIX as PROBE_STANDIN

    assert PROBE_STANDIN == STANDIN_SUFFIX
    assert declared_direction("motion_gain_STANDIN") == (True, None) and declared_direction("l1") == (False, None)
    # a new probe's metric gets the direction it declares (tables, compare and the report read higher_is_better)
    assert higher_is_better("pose_err") is None and higher_is_better("sharpness_gain") is None
    monkeypatch.setattr("eval.probes.base.PROBES", dict(PROBES))
    register_probe(Probe("test.pose", ("direct",), {"pose_err": False, "sharpness_gain": True}, run=lambda *a: {}))
    assert higher_is_better("pose_err") is False and higher_is_better("sharpness_gain_STANDIN") is True
    with pytest.raises(ValueError, match="motion_gain"):      # one column cannot be ranked two ways
        register_probe(Probe("test.other", ("direct",), {"motion_gain": True}, run=lambda *a: {}))


def test_table_reads_probe_directions(monkeypatch):
    """The ablation table marks the best value per column (bold, arrow) by the probe's declared direction; a column
    no one declares a direction for has neither."""
    from eval.probes import PROBES, Probe, register_probe
    from eval.table import aggregate, to_markdown

    runs = [{"axes": ["k"], "values": {"k": k}, "seed": 0, "protocol": "p", "protocol_hash": "h", "extra": {},
             "standin": False, "metrics": {"pose_err": e, "motion_gain": g}}
            for k, e, g in ((1, 2.0, 0.9), (2, 1.0, 0.3))]
    monkeypatch.setattr("eval.probes.base.PROBES", dict(PROBES))
    md = to_markdown(aggregate(runs))
    assert "| k | n | pose_err | motion_gain |" in md and "**" not in md
    register_probe(Probe("test.pose", ("direct",), {"pose_err": False}, run=lambda *a: {}))
    md = to_markdown(aggregate(runs))
    assert "| k | n | pose_err ↓ | motion_gain |" in md and "| 2 | 1 | **1.0000** | 0.3000 |" in md


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
