"""The learned SynthFaces landmark locator (eval.synth_landmarks) and ``akd_synthlm``.

Fast: a tiny config trains in seconds — caching by config hash ($PORTRAITLAB_CACHE), determinism, the held-out
error stored beside the weights and going down with training, the metric's plumbing in the runner.
Slow: the default config (the one protocols use) — held-out error < 1.5 px at 64², and AKD against a render
translated by 3 px ≈ 3."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval import synth_landmarks as SL
from helpers import assert_cache_hit_and_deterministic_training, forbid_training, packaged_default_config

TINY = SL.SynthLandmarkConfig(resolution=32, num_train_clips=24, frames_per_clip=2, num_val_clips=8, width=8,
                              steps=10, batch_size=8)


def test_tiny_locator_trains_caches_and_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path))
    assert SL.cache_dir() == tmp_path / "synth_landmarks"
    loc = SL.SynthLandmarkLocator(TINY, progress=False)
    files = sorted(p.name for p in (tmp_path / "synth_landmarks").iterdir())
    assert files == [f"{TINY.hash()}.json", f"{TINY.hash()}.pt"]
    info = json.loads((tmp_path / "synth_landmarks" / f"{TINY.hash()}.json").read_text())
    assert info["hash"] == TINY.hash() and info["config"]["steps"] == 10 and info["heldout_px"] > 0
    # trained beats untrained on the held-out renders (the loss went down)
    xv, kv = SL.render_set(TINY.num_val_clips, TINY.frames_per_clip, 32, TINY.hand_prob, TINY.seed + 1_000_003)
    torch.manual_seed(TINY.seed)
    untrained = SL.LandmarkNet(29, TINY.width).eval()
    with torch.no_grad():
        assert SL.point_error(loc(xv), kv) == pytest.approx(info["heldout_px"], rel=1e-4)
        assert info["heldout_px"] < SL.point_error(untrained(xv), kv)
    # second use loads the cache (no training); same weights as a fresh deterministic training
    assert_cache_hit_and_deterministic_training(monkeypatch, SL, TINY,
                                                lambda: SL.SynthLandmarkLocator(TINY, progress=False), loc, xv[:4])
    # a different training config is a different cache entry
    assert SL.SynthLandmarkConfig(steps=10).hash() != SL.SynthLandmarkConfig().hash()
    # frames of another size are resized to the locator's and the points scaled back (pixel centres at integers)
    big = torch.nn.functional.interpolate(xv[:2], size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(loc(big), (loc(xv[:2]) + 0.5) * 2 - 0.5, atol=0.6)


class Oracle:
    """A locator that knows the answer: the ground-truth keypoints of each frame (looked up by frame), + offset."""

    def __init__(self, frames, kps, offset):
        self.frames, self.kps, self.offset = frames, kps, torch.tensor(offset)

    def __call__(self, x):
        idx = [int(torch.argmin((self.frames - f).abs().flatten(1).sum(1))) for f in x]
        return self.kps[idx] + self.offset


def test_akd_synthlm_metric_in_the_suite(tmp_path):
    from omegaconf import OmegaConf

    from eval.metrics import FrameBatch
    from eval.suite import build_suite

    x, kp = SL.render_set(2, 3, 32, 0.0, seed=1)
    proto = OmegaConf.create({"name": "t", "metrics": ["akd_synthlm"], "resolution": 32})
    suite = build_suite(proto, keypoint_locator=Oracle(x, kp, [3.0, 4.0]))
    assert [m.name for m in suite.frame_metrics] == ["akd_synthlm"] and suite.facts["synth_landmarks"]
    m = suite.frame_metrics[0]
    # against the target's ground-truth keypoints: the oracle's 3-4-5 offset
    fb = FrameBatch(x[:3], x[:3], x[0], keypoints=kp[:3])
    assert np.allclose(m.frames(fb), 5.0, atol=1e-5)
    # without keypoints: against the locator on the reference frames (both offset alike → 0; other frames → > 0)
    assert np.allclose(m.frames(FrameBatch(x[:3], x[:3], x[0])), 0.0, atol=1e-5)
    assert (m.frames(FrameBatch(x[:3], x[3:6], x[0])) > 0.5).all()


def test_default_locator_ships_pinned_and_is_accurate(tmp_path, monkeypatch):
    """The protocols' locator (default config, 64²) is pinned: loaded from eval/assets with an empty user cache
    (never retrained on a new machine), its sha256 recorded; accurate on renders it never saw."""
    from datamodules.synthfaces.renderer import neutral_motion, render_clip, sample_identity

    cfg = packaged_default_config(SL, SL.SynthLandmarkConfig, tmp_path, monkeypatch)
    loc = SL.SynthLandmarkLocator(cfg, progress=False)
    assert loc.info["packaged"] is True and len(loc.info["weights_sha256"]) == 64
    assert loc.info["heldout_px"] < 1.5
    assert SL.AKDSynthLandmarks(64).facts["weights_sha256"] == loc.info["weights_sha256"]
    # fresh renders (a seed the locator never saw), hands included
    x, kp = SL.render_set(40, 2, 64, 0.5, seed=987)
    assert SL.point_error(loc(x), kp) < 1.5
    # a render translated by 3 px: AKD against the untranslated ground truth ≈ 3 (the locator follows the face)
    from eval.metrics import FrameBatch

    metric = SL.AKDSynthLandmarks(64, locator=loc)
    errs = []
    for seed in range(6):
        ident = sample_identity(np.random.default_rng(100 + seed))
        f0, k0, _ = render_clip(ident, neutral_motion(1), 64)
        f3, k3, _ = render_clip(ident, neutral_motion(1, tx=3.0 / 64), 64)
        t = lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255   # noqa: E731
        same = metric.frames(FrameBatch(t(f0), t(f0), t(f0)[0], keypoints=torch.from_numpy(k0)))
        shifted = metric.frames(FrameBatch(t(f3), t(f0), t(f0)[0], keypoints=torch.from_numpy(k0)))
        errs.append((same[0], shifted[0]))
    same, shifted = np.array(errs).T
    assert same.mean() < 1.5 and abs(shifted.mean() - 3.0) < 0.5


def test_cli_prints_the_shipped_locators_info(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path))
    forbid_training(monkeypatch, SL)
    assert SL.main([]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packaged"] is True and info["hash"] == SL.SynthLandmarkConfig().hash() and info["heldout_px"] < 1.5
