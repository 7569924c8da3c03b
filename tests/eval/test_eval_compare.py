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
