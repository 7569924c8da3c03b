"""eval.compare: paired bootstrap CI, per-video pairing, report / plots / grid files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from eval.compare import compare, paired_bootstrap, paired_differences
from eval.protocol import load_protocol
from lit_models.baselines import CopySource
from lit_models.baselines.config import CopySourceConfig


def test_paired_bootstrap_ci():
    rng = np.random.default_rng(0)
    shifted = 0.5 + 0.1 * rng.standard_normal(40)
    mean, lo, hi = paired_bootstrap(shifted, num_resamples=4000)
    assert mean == pytest.approx(shifted.mean()) and lo < mean < hi and lo > 0.4 and hi < 0.6
    # the CI width shrinks like 1/sqrt(n): 4x the videos, about half the width
    big = 0.5 + 0.1 * rng.standard_normal(160)
    _, lo2, hi2 = paired_bootstrap(big, num_resamples=4000)
    assert 0.35 < (hi2 - lo2) / (hi - lo) < 0.7
    noise = rng.standard_normal(40)
    _, lo, hi = paired_bootstrap(noise - noise.mean(), num_resamples=2000)
    assert lo < 0 < hi


def test_paired_differences_pair_on_video_id():
    a = pd.DataFrame({"video_id": ["v1", "v2", "v3"], "num_frames": 3, "l1": [0.1, 0.2, 0.3], "psnr": [20, 21, 22]})
    b = pd.DataFrame({"video_id": ["v3", "v2", "v1"], "num_frames": 3, "l1": [0.2, 0.1, 0.0], "psnr": [23, 22, 21]})
    summary, long = paired_differences({"A": a, "B": b}, "A", num_resamples=500)
    s = summary.set_index("metric")
    assert s.loc["l1", "diff_mean"] == pytest.approx(-0.1) and s.loc["l1", "verdict"] == "B better"
    assert s.loc["psnr", "diff_mean"] == pytest.approx(1.0) and s.loc["psnr", "share_better"] == 1.0
    assert sorted(long[long.metric == "l1"]["diff"].round(6)) == [-0.1, -0.1, -0.1]


class NoisyCopy(CopySource):
    """Copy-source plus fixed noise: strictly worse than copy-source on every video."""

    def animate(self, source, driving):
        g = torch.Generator().manual_seed(0)
        out = super().animate(source, driving)
        return (out + 0.2 * torch.rand(out.shape, generator=g)).clamp(0, 1)


def test_compare_two_models_writes_report(tmp_path, fake_data):
    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "metrics=[l1,psnr]"])
    models = {"copy": CopySource(CopySourceConfig()), "noisy": NoisyCopy(CopySourceConfig())}
    res = compare(["copy.ckpt", "noisy.ckpt"], proto, fake_data(n=6, T=4, size=32), tmp_path, models=models,
                  num_grid_videos=2, num_resamples=1000)
    s = res["summary"].set_index("metric")
    assert s.loc["l1", "verdict"] == "copy better" and s.loc["l1", "ci_low"] > 0
    assert s.loc["psnr", "verdict"] == "copy better" and s.loc["psnr", "ci_high"] < 0
    report = (tmp_path / "report.md").read_text()
    assert "| noisy | l1 ↓ |" in report and "paired_l1.png" in report
    for name in ("paired_l1.png", "paired_psnr.png", "compare_grid.mp4", "compare_grid.png", "paired_differences.csv",
                 "copy/metrics.json", "noisy/per_video.csv"):
        assert (tmp_path / name).is_file(), name
    from PIL import Image

    w, h = Image.open(tmp_path / "compare_grid.png").size
    assert w == 32 * 5 and h == 32 * 2 * 4     # source | driving | copy | noisy | target; 2 videos × 4 frames


def test_paired_ci_uses_pairing_and_matches_the_difference_bootstrap():
    """scipy's paired bootstrap on (a, b) = the bootstrap of the per-video differences (within Monte-Carlo error);
    with per-video difficulty shared by a and b, pairing gives a much narrower interval than resampling a and b
    independently would."""
    from scipy.stats import bootstrap

    from eval.compare import paired_ci

    rng = np.random.default_rng(1)
    difficulty = rng.standard_normal(60)                   # per-video, shared by both models
    a = difficulty + 0.05 * rng.standard_normal(60)
    b = difficulty + 0.1 + 0.05 * rng.standard_normal(60)
    mean, lo, hi = paired_ci(a, b, num_resamples=4000)
    assert mean == pytest.approx((b - a).mean())
    d_lo, d_hi = np.quantile([rng.choice(b - a, size=60).mean() for _ in range(4000)], [0.025, 0.975])
    assert lo == pytest.approx(d_lo, abs=0.006) and hi == pytest.approx(d_hi, abs=0.006)
    unpaired = bootstrap((a, b), lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis), paired=False,
                         vectorized=True, n_resamples=2000, method="percentile", random_state=0).confidence_interval
    assert (hi - lo) < 0.2 * (unpaired.high - unpaired.low)
    assert lo > 0                                           # the 0.1 shift is found only because of the pairing
    assert paired_ci([1.0, np.nan, 2.0], [1.5, 0.0, 2.5]) == (0.5, 0.5, 0.5)   # NaN pair left out; no spread


def test_compare_logs_one_wandb_run_and_an_html_report(tmp_path, fake_data):
    from experiments.wandb_offline import read_config, read_history, read_run, read_summary, run_files

    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "metrics=[l1,psnr]"])
    models = {"copy": CopySource(CopySourceConfig()), "noisy": NoisyCopy(CopySourceConfig())}
    res = compare(["copy.ckpt", "noisy.ckpt"], proto, fake_data(n=4, T=4, size=32), tmp_path, models=models,
                  num_grid_videos=2, num_resamples=500, use_wandb=True, wandb_mode="offline", project="cmp_proj")
    files = run_files(tmp_path)
    assert len(files) == 1                                  # one run: the comparison
    info = read_run(files[0])
    assert info["job_type"] == "compare" and info["project"] == "cmp_proj" and info["group"] == f"compare-{tmp_path.name}"
    row = read_history(files[0])[0]
    assert row["compare/deltas/_type"] == "table-file" and row["compare/deltas/nrows"] == 2      # l1, psnr
    assert row["compare/per_video/nrows"] == 2 * 4 and row["compare/side_by_side/_type"] == "video-file"
    s = res["summary"].set_index("metric")
    summ = read_summary(files[0])
    assert summ["delta/noisy/l1"] == pytest.approx(s.loc["l1", "diff_mean"])
    assert summ["delta/noisy/l1/ci_low"] == pytest.approx(s.loc["l1", "ci_low"])
    assert read_config(files[0])["baseline"] == "copy"
    page = (tmp_path / "report.html").read_text()
    assert page.count("<table class=compare>") == 1 and "data:video/mp4;base64," in page and "noisy better" not in page
    assert "copy better" in page


# ---- command line: `python -m experiments.compare` (Hydra); `python -m eval.compare` only points there ----------
def test_eval_compare_cli_prints_the_new_command(capsys):
    """eval must not import the entry points' configs, so `python -m eval.compare A B k=v` prints the equivalent
    `experiments.compare` command (exit 2) instead of running."""
    from eval.compare import main

    assert main(["A.ckpt", "B.ckpt", "eval_protocol=vox_self", "out=cmp"]) == 2
    err = capsys.readouterr().err
    assert "python -m experiments.compare ckpts=[A.ckpt,B.ckpt] eval_protocol=vox_self out=cmp" in err
    assert main([]) == 2 and "ckpts=[A.ckpt,B.ckpt] eval_protocol=NAME" in capsys.readouterr().err


def test_compare_cli_checks_its_checkpoints(compose_cfg, tmp_path):
    """`ckpts` is a key of the composed config (a typo fails at compose time); fewer than two checkpoints or a
    missing file is an error naming `ckpts` / the file, before any data is read."""
    from hydra.errors import ConfigCompositionException

    from experiments.compare import compare_checkpoints
    from experiments.runtime import ConfigError

    with pytest.raises(ConfigCompositionException, match="ckptz"):
        compose_cfg("compare", ["ckptz=[a.ckpt,b.ckpt]"])
    one = tmp_path / "a.ckpt"
    one.write_bytes(b"")
    with pytest.raises(ConfigError, match="ckpts: give at least two"):
        compare_checkpoints(compose_cfg("compare", [f"ckpts=[{one}]", f"out={tmp_path}"]))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        compare_checkpoints(compose_cfg("compare", [f"ckpts=[{one},{tmp_path / 'nope.ckpt'}]", f"out={tmp_path}"]))


def _two_checkpoints(compose_cfg, root):
    """copy-source and an untrained direct regressor (random weights, seed 0), saved as checkpoints."""
    from experiments.train import save_untrained_checkpoint
    from lit_models.registry import build_model

    ckpts = []
    for name, over in (("copy", ["model=copy_source"]),
                       ("direct", ["model=direct", "model.base_channels=4", "model.num_down=2"])):
        torch.manual_seed(0)
        model = build_model(compose_cfg("train", over).model)
        ckpts.append(save_untrained_checkpoint(model, root / name / "checkpoints" / "last.ckpt"))
    return ckpts


def _cli_overrides(ckpts, synth_root):
    return [f"ckpts=[{ckpts[0]},{ckpts[1]}]", "eval_protocol=synthfaces_self", f"data.root={synth_root}",
            "data.synth=null", "debug=fast", "logger=none", "eval_protocol.metrics=[l1,psnr]",
            "eval_protocol.num_grid_videos=1"]


def test_compare_cli_config_runs_the_comparison(compose_cfg, synth_root, tmp_path):
    """The composed `compare` config (as the CLI gets it) on two checkpoints loaded from disk: copy-source is better
    on l1 than an untrained direct regressor; results per checkpoint label."""
    from experiments.compare import compare_checkpoints

    ckpts = _two_checkpoints(compose_cfg, tmp_path)
    res = compare_checkpoints(compose_cfg("compare", [*_cli_overrides(ckpts, synth_root), f"out={tmp_path / 'cmp'}"]))
    s = res["summary"].set_index("metric")
    assert s.loc["l1", "model"] == "direct" and s.loc["l1", "verdict"] == "copy better"
    assert res["report"] == tmp_path / "cmp" / "report.md" and (tmp_path / "cmp" / "copy" / "metrics.json").is_file()


@pytest.mark.slow
def test_compare_cli_end_to_end(compose_cfg, synth_root, tmp_path):
    """The real Hydra entry point (`python -m experiments.compare`, a subprocess): without out= the report lands in
    the run directory under $PORTRAITLAB_RUNS/compare/."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    ckpts = _two_checkpoints(compose_cfg, tmp_path)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PORTRAITLAB_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "-m", "experiments.compare", *_cli_overrides(ckpts, synth_root)],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("report:"))
    report = Path(line.split()[1])
    assert report.is_relative_to(tmp_path / "runs" / "compare") and report.name == "report.md"
    summary = pd.read_csv(report.parent / "summary.csv").set_index("metric")
    assert summary.loc["l1", "model"] == "direct" and summary.loc["l1", "verdict"] == "copy better"
    assert (report.parent / "copy" / "metrics.json").is_file() and (report.parent / "compare_grid.mp4").is_file()


# ---- the statistics match the headline (frame-weighted, as metrics.json); dataset metrics without interval ------
class UnequalLengths:
    """32 videos of unequal length (4 or 12 frames); ``fingerprint`` names the data (eval.reuse)."""

    def __init__(self, FakeEvalData, lengths=(4, 12) * 16, seed: int = 0):
        self.lengths, self.seed = list(lengths), seed
        self.fake = [FakeEvalData(n=len(self.lengths), T=t, size=32, seed=seed) for t in self.lengths]

    def eval_dataset(self, split, mode, num_frames, stride, max_videos, pairs_csv):
        outer = self

        class Videos:
            def __iter__(self):
                return (outer.fake[i].video(i) for i in range(len(outer.lengths)))

            def __len__(self):
                return len(outer.lengths)

            def fingerprint(self):
                return f"unequal-{outer.lengths}-{outer.seed}"

        return Videos()


class DimCopy(CopySource):
    """Copy-source darkened, much more on short clips than on long ones: the per-video Δ is correlated with the
    length, so the frame-weighted Δ (long clips weigh more) and the mean of per-video Δs are far apart."""

    def animate(self, source, driving):
        out = super().animate(source, driving)
        return out * (0.9 if driving.shape[1] > 6 else 0.5)


def test_compare_ci_is_the_ci_of_the_headline_frame_weighted_difference(tmp_path, fake_data):
    import json

    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=0", "metrics=[l1,psnr]", "batch_size=1"])
    models = {"copy": CopySource(CopySourceConfig()), "dim": DimCopy(CopySourceConfig())}
    res = compare(["copy.ckpt", "dim.ckpt"], proto, UnequalLengths(fake_data), tmp_path, models=models, num_grid_videos=0,
                  num_resamples=2000)
    s = res["summary"].set_index("metric")
    head = {k: json.loads((tmp_path / k / "metrics.json").read_text())["metrics"] for k in models}
    for m in ("l1", "psnr"):
        assert s.loc[m, "baseline_mean"] == pytest.approx(head["copy"][m], rel=1e-9)   # = metrics.json
        assert s.loc[m, "model_mean"] == pytest.approx(head["dim"][m], rel=1e-9)
        assert s.loc[m, "diff_mean"] == pytest.approx(head["dim"][m] - head["copy"][m], rel=1e-9)
        assert s.loc[m, "ci_low"] < s.loc[m, "diff_mean"] < s.loc[m, "ci_high"]      # the CI contains the headline Δ
        assert s.loc[m, "interval"].startswith("paired bootstrap")
    # the mean of per-video Δs (the old, video-weighted estimand) is another number, outside this CI
    pv = {k: pd.read_csv(tmp_path / k / "per_video.csv").set_index("video_id") for k in models}
    video_weighted = float((pv["dim"]["l1"] - pv["copy"]["l1"]).mean())
    assert not s.loc["l1", "ci_low"] <= video_weighted <= s.loc["l1", "ci_high"]
    print(f"l1 Δ frame-weighted {s.loc['l1', 'diff_mean']:.5f} CI [{s.loc['l1', 'ci_low']:.5f}, "
          f"{s.loc['l1', 'ci_high']:.5f}]; video-weighted {video_weighted:.5f}")
    pv = pv["copy"]
    assert sorted(pv["num_frames"].unique()) == [3, 11]                               # frame 0 is the source
    assert int(s.loc["l1", "num_frames_baseline"]) == 16 * 3 + 16 * 11


def test_weighted_paired_ci_equals_a_bootstrap_of_the_frame_weighted_ratio():
    """scipy's paired bootstrap of Σs_B/Σn_B − Σs_A/Σn_A = a plain numpy resampling of videos (Monte-Carlo error),
    and differs from the bootstrap of per-video mean differences when lengths and per-video Δ are correlated."""
    from eval.compare import paired_ci, weighted_paired_ci

    rng = np.random.default_rng(3)
    n = rng.choice([5, 50], size=80).astype(float)
    per_frame_a = 0.2 + 0.05 * rng.standard_normal(80)
    per_frame_b = per_frame_a + np.where(n > 10, 0.02, 0.10) + 0.01 * rng.standard_normal(80)   # long: smaller Δ
    sa, sb = per_frame_a * n, per_frame_b * n
    d, lo, hi = weighted_paired_ci(sa, n, sb, n, num_resamples=4000)
    assert d == pytest.approx(sb.sum() / n.sum() - sa.sum() / n.sum())
    idx = rng.integers(0, 80, size=(4000, 80))
    boot = sb[idx].sum(1) / n[idx].sum(1) - sa[idx].sum(1) / n[idx].sum(1)
    b_lo, b_hi = np.quantile(boot, [0.025, 0.975])
    assert lo == pytest.approx(b_lo, abs=0.003) and hi == pytest.approx(b_hi, abs=0.003)
    vmean, vlo, vhi = paired_ci(per_frame_a, per_frame_b, num_resamples=2000)
    assert vmean > hi          # the video-weighted Δ lies outside the frame-weighted CI: other estimand


def test_per_frame_nan_frames_are_left_out_as_metrics_json_does():
    from eval.compare import video_sums

    pf = pd.DataFrame({"video_id": ["a", "a", "a", "b"], "frame": [1, 2, 3, 1], "akd": [1.0, np.nan, 3.0, 10.0]})
    s, n = video_sums(pf, ["akd"])
    assert s.loc["a", "akd"] == 4.0 and n.loc["a", "akd"] == 2 and n.loc["b", "akd"] == 1
    assert s["akd"].sum() / n["akd"].sum() == pytest.approx(np.nanmean(pf["akd"]))


def test_dataset_metrics_get_a_delta_and_an_explicit_no_interval():
    from eval.compare import NO_INTERVAL, report_markdown

    pf = {k: pd.DataFrame({"video_id": ["v1", "v2"], "frame": [1, 1], "l1": [0.1, 0.2 + i]})
          for i, k in enumerate(["A", "B"])}
    summary, _ = paired_differences(pf, "A", num_resamples=200,
                                    dataset_metrics={"A": {"fid": 30.0}, "B": {"fid": 25.0}})
    r = summary.set_index("metric").loc["fid"]
    assert r.diff_mean == -5.0 and np.isnan(r.ci_low) and r.interval == NO_INTERVAL and r.verdict == "no interval"
    md = report_markdown(summary, {"A": "a", "B": "b"}, "p", "0" * 64, [], None)
    assert "| B | fid ↓ | 30 | 25 | -5 | no interval |" in md


# ---- reuse of finished evaluations, one model at a time -----------------------------------------------------------
def test_compare_reuses_matching_evaluations_and_loads_one_model_at_a_time(tmp_path, monkeypatch, fake_data):
    import gc
    import weakref

    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=0", "metrics=[l1,psnr]", "batch_size=1"])
    alive: list = []
    loads: list[str] = []

    def load(label, path):
        gc.collect()
        assert all(r() is None for r in alive), "a previous model is still in memory"
        loads.append(label)
        m = DimCopy(CopySourceConfig()) if "dim" in label else CopySource(CopySourceConfig())
        alive.append(weakref.ref(m))
        return m

    ckpts = [str(tmp_path / "copy" / "checkpoints" / "last.ckpt"), str(tmp_path / "dim" / "checkpoints" / "last.ckpt")]
    data = UnequalLengths(fake_data)
    first = compare(ckpts, proto, data, tmp_path / "cmp1", load=load, num_grid_videos=2, num_resamples=500)
    assert first["reused"] == {"copy": False, "dim": False} and loads == ["copy", "dim"]
    assert (tmp_path / "cmp1" / "compare_grid.mp4").is_file()

    import eval.runner

    def no_eval(*a, **k):
        raise AssertionError("evaluated again although a matching evaluation exists")

    monkeypatch.setattr(eval.runner, "run_evaluation", no_eval)
    second = compare(ckpts, proto, data, tmp_path / "cmp2", load=load, num_grid_videos=0, num_resamples=500,
                     reuse_dirs=[tmp_path / "cmp1"])
    assert second["reused"] == {"copy": True, "dim": True}
    pd.testing.assert_frame_equal(first["summary"], second["summary"])
    assert (tmp_path / "cmp2" / "dim" / "reused_from.json").is_file()
    # reuse follows the model's identity, not its label: swapped labels still find both evaluations
    swapped = compare(ckpts[::-1], proto, data, tmp_path / "cmp2b", load=lambda lb, p: load(
        "copy" if "dim" in lb else "dim", p), num_grid_videos=0, num_resamples=100, reuse_dirs=[tmp_path / "cmp1"])
    assert all(swapped["reused"].values())
    # another protocol (metric list → hash), other data (fingerprint) or another model (weights/class): evaluated
    for other_proto, other_data, other_model in (
            (load_protocol("synthfaces_self", ["resolution=32", "num_frames=0", "metrics=[l1]", "batch_size=1"]), data,
             None), (proto, UnequalLengths(fake_data, seed=1), None), (proto, data, NoisyCopy)):
        def load2(label, path, other_model=other_model):
            return other_model(CopySourceConfig()) if other_model is not None else load(label, path)

        with pytest.raises(AssertionError, match="evaluated again"):
            compare(ckpts, other_proto, other_data, tmp_path / "cmp3", load=load2, num_grid_videos=0,
                    num_resamples=100, reuse_dirs=[tmp_path / "cmp1"])


def test_reuse_finds_the_training_runs_own_evaluation(tmp_path, fake_data):
    """``experiments.train`` evaluates into the run directory: a checkpoint there is matched by its own metrics.json."""
    from eval.reuse import candidates, evaluate_or_reuse
    from eval.runner import run_evaluation

    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "metrics=[l1]"])
    run = tmp_path / "run"
    model = CopySource(CopySourceConfig())
    run_evaluation(model, fake_data(n=3), proto, run, progress=False)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert candidates(ckpt)[0] == run
    _, found, reused = evaluate_or_reuse(CopySource(CopySourceConfig()), fake_data(n=3), proto, tmp_path / "o",
                                         ckpt=str(ckpt))
    assert reused and found == run
    _, found, reused = evaluate_or_reuse(CopySource(CopySourceConfig()), fake_data(n=2), proto.copy(), tmp_path / "o2",
                                         ckpt=str(ckpt))
    assert reused  # FakeEvalData has no fingerprint: its type is the key, the same; max_videos is in the hash


def test_reuse_needs_the_same_run_settings(tmp_path, fake_data):
    """An evaluation is reused only under the same sampling seed and precision (``run_settings`` in metrics.json):
    the same model, protocol and data evaluated with another seed or in bf16 is evaluated again."""
    from eval.reuse import evaluate_or_reuse
    from eval.runner import run_evaluation

    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "metrics=[l1]"])
    run = tmp_path / "run"
    written = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2), proto, run, progress=False, seed=3)
    assert written["run_settings"] == {"seed": 3, "precision": "fp32", "local_landmarks": None, "device_type": "cpu"}
    ckpt = str(run / "checkpoints" / "last.ckpt")
    _, _, reused = evaluate_or_reuse(CopySource(CopySourceConfig()), fake_data(n=2), proto, tmp_path / "a",
                                     ckpt=ckpt, seed=3, progress=False)
    assert reused
    for i, other in enumerate(({"seed": 4}, {"seed": 3, "precision": "bf16"})):
        _, found, reused = evaluate_or_reuse(CopySource(CopySourceConfig()), fake_data(n=2), proto,
                                             tmp_path / f"b{i}", ckpt=ckpt, progress=False, **other)
        assert not reused and found == tmp_path / f"b{i}"
