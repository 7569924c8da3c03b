"""Sweeps beyond one process: a 2-job sweep through submitit's local executor (the SLURM launcher's local twin)
ending in the table, the SLURM launcher config's documented keys, and an Optuna search (3 trials on the tiny MRFA
config) whose study lives in the sweep dir and continues when the command runs again."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(tmp_path: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "MASTER_", "WORLD_SIZE"))}
    env.update(PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE", WANDB_MODE="offline", WANDB_SILENT="true",
               OMP_NUM_THREADS="1", PORTRAITLAB_RUNS=str(tmp_path / "runs"), HYDRA_FULL_ERROR="1")
    out = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-4000:])
    return out


def test_slurm_launcher_config_composes_with_the_documented_keys(compose_cfg):
    cfg = compose_cfg("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                                "hydra.launcher.tasks_per_node=4", "hydra.launcher.timeout_min=30",
                                "hydra.launcher.array_parallelism=3", "trainer=ddp", "trainer.devices=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min,
            launcher.array_parallelism) == ("gpu", 4, 4, 30, 3)
    assert launcher.max_num_timeout == 3 and launcher.setup == ["export OMP_WAIT_POLICY=PASSIVE"]
    local = compose_cfg("train", ["hydra/launcher=local_parallel"], return_hydra_config=True).hydra.launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher")


def test_hparams_search_configs_compose_with_their_search_space(compose_cfg):
    for name, params in {"mrfa_lr_equivariance": {"model.optimizer.lr", "model.lambda_equivariance_value"},
                         "xnemo_motion_dim_lr": {"model.motion_dim", "model.optimizer.lr"}}.items():
        cfg = compose_cfg("train", [f"hparams_search={name}"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("OptunaSweeper") and set(sweeper.params) == params
        assert sweeper.direction == "minimize" and cfg.objective == "l1"
        assert sweeper.storage.endswith(f"search/{name}/optuna.db")


@pytest.mark.slow
def test_submitit_local_two_job_sweep_ends_in_the_table(synth_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    cli(tmp_path, "sweep=baselines", "hydra.sweeper.params.seed=0", "hydra/launcher=submitit_local", "debug=fast",
        f"data.root={synth_root}", "data.synth=null", "logger=csv", f"hydra.sweep.dir={sweep_dir}")
    runs = sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
    assert len(runs) == 2
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2   # both ran as submitit jobs
    table = (sweep_dir / "table.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| copy_source") or ln.startswith("| direct")]
    assert len(rows) == 2, table
    for run in runs:
        l1 = json.loads((run / "metrics.json").read_text())["metrics"]["l1"]
        assert f"{l1:.4f}"[:5] in table   # the run's number is in the table
    print(table)


def trials(db: Path) -> list[tuple[int, str, float]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT t.number, t.state, v.value FROM trials t LEFT JOIN trial_values v "
                           "ON v.trial_id = t.trial_id ORDER BY t.number").fetchall()


@pytest.mark.slow
def test_optuna_search_three_trials_returns_the_objective_and_resumes(synth_root, tmp_path):
    args = ["hparams_search=mrfa_lr_equivariance", "debug=fast", f"data.root={synth_root}", "data.synth=null",
            "logger=csv", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2"]
    out = cli(tmp_path, *args)
    search = tmp_path / "runs" / "search" / "mrfa_lr_equivariance"
    done = trials(search / "optuna.db")
    assert [(n, s) for n, s, _ in done] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    runs = sorted(p.parent for p in search.glob("*/metrics.json"))
    assert len(runs) == 3
    # each trial's value is its run's objective (the protocol's l1), and the trial's parameters are the run's
    l1s = sorted(json.loads((r / "metrics.json").read_text())["metrics"]["l1"] for r in runs)
    assert sorted(v for *_, v in done) == pytest.approx(l1s, rel=1e-9)
    lrs = {json.loads((r / "metrics.json").read_text())["protocol"] for r in runs}
    assert lrs == {"synthfaces_self"}
    assert len({(r / "config.yaml").read_text().split("lr: ")[1].split("\n")[0] for r in runs}) == 3
    assert "Best parameters" in out.stdout or (search / "optimization_results.yaml").exists()
    # the same command again continues the study (trial numbers go on) instead of starting a new one
    cli(tmp_path, *args[:-2], "hydra.sweeper.n_trials=1", "hydra.sweeper.sampler.n_startup_trials=2")
    again = trials(search / "optuna.db")
    assert [n for n, *_ in again] == [0, 1, 2, 3] and again[:3] == done
    assert len(list(search.glob("*/metrics.json"))) == 4
    for n, state, value in again:
        print(f"trial {n}: {state} l1={value:.5f}")
