"""FVD: registered like FID, reference-checked on stand-in weights against a float64 numpy/scipy computation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval.protocol import load_protocol
from eval.runner import run_evaluation
from lit_models.baselines import CopySource
from lit_models.baselines.config import CopySourceConfig


def _proto(*extra):
    return load_protocol("synthfaces_self", ["resolution=16", "num_frames=17", "batch_size=3", "metrics=[l1,fvd]",
                                             "standin_metrics=[fvd]", "fvd_clip_len=2", *extra])


def scipy_fvd(real_clips: list[torch.Tensor], fake_clips: list[torch.Tensor]) -> float:
    """d² = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½), features of the same stand-in net, np.cov + sqrtm."""
    from scipy import linalg

    from eval.fvd import StandinI3D

    net = StandinI3D()

    def feats(clips):
        with torch.no_grad():
            return np.concatenate([net(c[None].double().float() * 255).double().numpy() for c in clips])

    fr, fg = feats(real_clips), feats(fake_clips)
    mu_r, mu_g = fr.mean(0), fg.mean(0)
    s_r, s_g = np.cov(fr, rowvar=False), np.cov(fg, rowvar=False)
    covmean, _ = linalg.sqrtm(s_r @ s_g, disp=False)
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(s_r + s_g - 2 * covmean.real))


class Shifted(CopySource):
    """A non-degenerate 'generator': the driving frames darkened and shifted by 2 px."""

    def animate(self, source, driving):
        return (driving * 0.8 + 0.05).roll(2, dims=-1)


def test_fvd_matches_scipy_reference_on_standin_weights(tmp_path, fake_data):
    data = fake_data(n=6, T=17, size=16)
    res = run_evaluation(Shifted(CopySourceConfig()), data, _proto(), tmp_path, progress=False)
    assert "fvd_STANDIN" in res["metrics"] and "fvd" not in res["metrics"] and res["standin"] is True
    facts = res["dataset_metric_facts"]["fvd_STANDIN"]
    assert facts["clips"] == {"real": 48, "fake": 48} and facts["clip_len"] == 2
    # by hand: scored frames 1..16 of each video, cut into 8 clips of 2 frames (3×2×16×16, channels first)
    real, fake = [], []
    for i in range(6):
        v = fake_data(n=6, T=17, size=16).video(i)
        tgt = v["target"][1:]
        pred = (tgt * 0.8 + 0.05).roll(2, dims=-1)
        for k in range(8):
            real.append(tgt[2 * k:2 * k + 2].permute(1, 0, 2, 3))
            fake.append(pred[2 * k:2 * k + 2].permute(1, 0, 2, 3))
    ref = scipy_fvd(real, fake)
    print(f"\nFVD (stand-in I3D, 48 + 48 clips of 2 frames): runner {res['metrics']['fvd_STANDIN']:.8f}, "
          f"numpy/scipy {ref:.8f}")
    assert res["metrics"]["fvd_STANDIN"] == pytest.approx(ref, rel=1e-4)
    assert ref > 0


class Oracle(CopySource):
    def animate(self, source, driving):
        return driving.clone()


def test_fvd_of_the_ground_truth_is_zero_and_short_videos_are_counted(tmp_path, fake_data):
    res = run_evaluation(Oracle(CopySourceConfig()), fake_data(n=6, T=17, size=16), _proto(), tmp_path, progress=False)
    assert abs(res["metrics"]["fvd_STANDIN"]) < 1e-6
    short = run_evaluation(Oracle(CopySourceConfig()), fake_data(n=2, T=3, size=16),
                           _proto("num_frames=3", "fvd_clip_len=4"), tmp_path / "short", progress=False)
    assert short["dataset_metric_facts"]["fvd_STANDIN"]["videos_without_clip"] == 2
    assert short["metrics"]["fvd_STANDIN"] is None or np.isnan(short["metrics"]["fvd_STANDIN"])
    assert json.loads((tmp_path / "short" / "metrics.json").read_text())["metrics"]["fvd_STANDIN"] is None


def test_fvd_resumes_from_the_state_file(tmp_path, fake_data):
    full = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=6, T=17, size=16), _proto(), tmp_path / "a",
                          progress=False)

    class Crash(CopySource):
        calls = 0

        def animate(self, source, driving):
            Crash.calls += 1
            if Crash.calls == 2:
                raise KeyboardInterrupt
            return super().animate(source, driving)

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(Crash(CopySourceConfig()), fake_data(n=6, T=17, size=16), _proto(), tmp_path / "b",
                       progress=False)
    resumed = run_evaluation(Crash(CopySourceConfig()), fake_data(n=6, T=17, size=16), _proto(), tmp_path / "b",
                             progress=False)
    assert resumed["metrics"]["fvd_STANDIN"] == pytest.approx(full["metrics"]["fvd_STANDIN"], rel=1e-9)


def test_real_fvd_without_weights_names_the_file_and_url(tmp_path, monkeypatch):
    from eval.fvd import FVD
    from eval.weights import MissingWeightsError

    monkeypatch.setenv("PORTRAITLAB_I3D", str(tmp_path / "absent" / "i3d_torchscript.pt"))
    with pytest.raises(MissingWeightsError, match=r"i3d_torchscript\.pt.*\n.*PORTRAITLAB_I3D.*\n.*dropbox"):
        FVD()


def test_tdiff_l1_is_zero_for_the_ground_truth_and_positive_for_a_frozen_output(tmp_path, fake_data):
    proto = load_protocol("synthfaces_self", ["resolution=16", "num_frames=5", "metrics=[tdiff_l1]"])
    oracle = run_evaluation(Oracle(CopySourceConfig()), fake_data(n=2, T=5, size=16), proto, tmp_path / "o",
                            progress=False)
    frozen = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=5, size=16), proto, tmp_path / "f",
                            progress=False)
    assert oracle["metrics"]["tdiff_l1"] == pytest.approx(0, abs=1e-9)
    v = fake_data(n=2, T=5, size=16)
    by_hand = np.mean([(v.video(i)["target"][t] - v.video(i)["target"][t - 1]).double().abs().mean().item()
                       for i in range(2) for t in range(2, 5)])
    assert frozen["metrics"]["tdiff_l1"] == pytest.approx(by_hand, rel=1e-6)
