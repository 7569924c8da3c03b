"""eval.table: grouping by axes, mean ± std over seeds, best-per-column direction, files, sweep callback."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from eval.table import SweepTableCallback, main, make_table

# (refine_iters, seed) -> metrics
RESULTS = {
    (1, 0): {"l1": 0.10, "psnr": 20.0, "fid_STANDIN": 5.0},
    (1, 1): {"l1": 0.12, "psnr": 21.0, "fid_STANDIN": 6.0},
    (2, 0): {"l1": 0.08, "psnr": 22.0, "fid_STANDIN": 7.0},
    (2, 1): {"l1": 0.06, "psnr": 23.0, "fid_STANDIN": 8.0},
    (4, 0): {"l1": 0.09, "psnr": 19.0, "fid_STANDIN": 4.0},
}


def _write_runs(root, protocol="synthfaces_self", phash="abc123", results=RESULTS):
    for (it, seed), m in results.items():
        d = root / f"{it}_{seed}_{protocol}"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({"axes": ["model.refine_iters"], "seed": seed,
                                                       "model": {"name": "mrfa", "refine_iters": it}}))
        (d / "metrics.json").write_text(json.dumps({"protocol": protocol, "protocol_hash": phash, "metrics": m,
                                                    "standin": True}))


def test_table_mean_std_best_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    _write_runs(tmp_path)
    written = make_table([tmp_path])
    csv = pd.read_csv(written["csv"]).set_index("model.refine_iters")
    assert list(csv.index) == [1, 2, 4] and list(csv.n) == [2, 2, 1]
    assert csv.loc[2, "l1_mean"] == pytest.approx(0.07)
    assert csv.loc[2, "l1_std"] == pytest.approx(np.std([0.08, 0.06], ddof=1))
    # best: lowest l1 and fid, highest psnr
    assert csv.l1_best.tolist() == [False, True, False]
    assert csv.psnr_best.tolist() == [False, True, False]
    assert csv.fid_STANDIN_best.tolist() == [False, False, True]
    md = written["md"].read_text()
    assert "| 2 | 2 | **0.0700 ± 0.0141** | **22.50 ± 0.71** | 7.5000 ± 0.7071 |" in md
    assert "STAND-IN" in md and "psnr ↑" in md and "l1 ↓" in md
    tex = written["tex"].read_text()
    assert "\\textbf{0.0700 $\\pm$ 0.0141}" in tex and "fid\\_STANDIN" in tex
    assert (tmp_path / "plot_model_refine_iters.png").stat().st_size > 1000


def test_protocols_never_share_a_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    _write_runs(tmp_path / "a", protocol="synthfaces_self", phash="h1")
    _write_runs(tmp_path / "b", protocol="synthfaces_self", phash="h2")   # same name, other settings
    csv = pd.read_csv(make_table([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out")["csv"])
    assert sorted(csv.protocol_hash.unique()) == ["h1", "h2"] and len(csv) == 6 and (csv.n <= 2).all()


def test_cli_and_sweep_callback(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    monkeypatch.setenv("WANDB_MODE", "disabled")
    _write_runs(tmp_path / "sweep")
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "cli"), "--no-wandb"]) == 0
    assert (tmp_path / "cli" / "table.md").is_file()
    cb = SweepTableCallback()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    assert f"sweep table: {tmp_path / 'sweep' / 'table.md'}" in capsys.readouterr().out


def test_callback_is_a_hydra_callback():
    from hydra.experimental.callback import Callback

    assert issubclass(SweepTableCallback, Callback)


@pytest.mark.slow
def test_wandb_table_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _write_runs(tmp_path)
    written = make_table([tmp_path])
    assert "wandb" in written and list(tmp_path.glob("wandb/offline-run-*"))


def test_a_metric_missing_from_some_runs_says_how_many_runs_it_averages(tmp_path):
    """A column that only some of a row's runs have (an older run without a diagnostic, NaN) is averaged over those
    runs and labelled (n=...), never shown as if all n runs agreed."""
    results = {(1, 0): {"l1": 0.10, "motion_err_prior": 3.0}, (1, 1): {"l1": 0.12},
               (1, 2): {"l1": 0.11, "motion_err_prior": float("nan")}, (2, 0): {"l1": 0.08, "motion_err_prior": 2.0},
               (2, 1): {"l1": 0.06, "motion_err_prior": 5.0}}
    _write_runs(tmp_path, results=results)
    md = make_table([tmp_path], use_wandb=False)["md"].read_text()
    assert "| 1 | 3 | 0.1100 ± 0.0100 | **3.0000 (n=1)** |" in md
    assert "| 2 | 2 | **0.0700 ± 0.0141** | 3.5000 ± 2.1213 |" in md
    csv = pd.read_csv(tmp_path / "table.csv").set_index("model.refine_iters")
    assert csv.loc[1, "motion_err_prior_n"] == 1 and np.isnan(csv.loc[2, "motion_err_prior_n"])
