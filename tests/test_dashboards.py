"""One W&B story per sweep, read back from the offline run files (experiments.wandb_offline): jobs and the table run
in the sweep's unique group, axis/seed tags, job types, the end-of-training evaluation at the final step with the
model's diagnostics and a summary under metrics.json's names, a later `evaluate ckpt=` linked to its training run,
logger.wandb.project respected, checkpoints as artifacts behind logger.wandb.log_model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import tiny_run

REPO = Path(__file__).resolve().parents[1]


WANDB = ["logger=wandb", "logger.wandb.mode=offline", "logger.wandb.project=dash_proj"]


def test_sweep_story_eval_at_final_step_table_in_group_and_linked_evaluation(compose_cfg, synth_root, tmp_path,
                                                                           monkeypatch):
    from eval.table import SweepTableCallback, make_table
    from experiments import rundir
    from experiments.evaluate import evaluate
    from experiments.train import train
    from experiments.wandb_offline import (read_artifacts, read_config, read_history, read_run, read_summary,
                                           run_files)

    sweep = tmp_path / "sweeps" / "dash" / "2026-01-01_00-00-00"
    monkeypatch.setattr(rundir, "sweep_dir", lambda: sweep)      # as inside a Hydra multirun job
    steps = 3
    for j, lr in enumerate((1e-3, 2e-3)):
        extra = ["logger.wandb.log_model=true"] if j == 0 else []
        cfg = compose_cfg("train", ["experiment=baseline_direct", "sweep_name=dash", "axes=[model.optimizer.lr]",
                                    f"model.optimizer.lr={lr}", "seed=1", f"trainer.max_steps={steps}",
                                    "trainer.checkpoint_every_n_steps=100", "trainer.val_check_interval=100",
                                    *tiny_run(synth_root, sweep / f"{j}_lr", *WANDB, *extra)])
        train(cfg)
    hydra_like = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "sweeper": {"params": {"model.optimizer.lr": "1e-3,2e-3"}},
                                             "overrides": {"task": ["sweep=dash"]}},
                                   "sweep_name": "dash", "name": "dash", "axes": ["model.optimizer.lr"],
                                   "logger": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger"},
                                              "wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger",
                                                        "project": "dash_proj", "entity": None, "mode": "offline"}}})
    make_table([sweep], sweep, wandb_settings=SweepTableCallback.wandb_settings(hydra_like))

    runs = {read_run(f)["job_type"] + ":" + f.parts[len(sweep.parts)]: f for f in run_files(sweep)}
    group = "dash-2026-01-01_00-00-00"
    assert sorted(runs) == ["table:wandb", "train:0_lr", "train:1_lr"]
    for key, f in runs.items():
        info = read_run(f)
        assert info["group"] == group and info["project"] == "dash_proj", (key, info)
    job = runs["train:0_lr"]
    assert set(read_run(job)["tags"]) >= {"model.optimizer.lr=0.001", "seed=1", "dash"}
    assert "model.optimizer.lr=0.002" in read_run(runs["train:1_lr"])["tags"]

    # the end-of-training evaluation: at the final training step, not 0; summary under metrics.json's names
    metrics = json.loads((sweep / "0_lr" / "metrics.json").read_text())["metrics"]
    rows = read_history(job)
    eval_rows = [r for r in rows if "eval/synthfaces_self/l1" in r]
    assert len(eval_rows) == 1 and eval_rows[0]["trainer/global_step"] == steps
    assert eval_rows[0]["eval/synthfaces_self/l1"] == pytest.approx(metrics["l1"])
    media = [r for r in rows if r.get("eval/synthfaces_self/per_video/_type") == "table-file"]
    assert media and media[0]["trainer/global_step"] == steps
    assert media[0]["eval/synthfaces_self/grid/_type"] == "video-file"
    summary = read_summary(job)
    for name, value in metrics.items():
        assert summary[name] == pytest.approx(value), name
    assert summary["eval_step"] == steps and summary["protocol_hash"] == \
        json.loads((sweep / "0_lr" / "metrics.json").read_text())["protocol_hash"]
    # checkpoints as artifacts only behind logger.wandb.log_model=true
    arts = [a for a in read_artifacts(job) if a["type"] == "model"]
    assert arts and any(p == "last.ckpt" for a in arts for p in a["files"]) and "latest" in arts[-1]["aliases"]
    assert [a for a in read_artifacts(runs["train:1_lr"]) if a["type"] == "model"] == []

    # the table run carries the sweep's config
    tcfg = read_config(runs["table:wandb"])
    assert tcfg["sweep_name"] == "dash" and tcfg["axes"] == ["model.optimizer.lr"] and tcfg["grid"] == {"model.optimizer.lr": "1e-3,2e-3"}
    assert read_run(runs["table:wandb"])["tags"] == ["dash"]

    # a later evaluation of job 0's checkpoint: a run linked to it (same group, its id in the config), at its step
    monkeypatch.setattr(rundir, "sweep_dir", lambda: None)
    ckpt = sweep / "0_lr" / "checkpoints" / "last.ckpt"
    ev_dir = tmp_path / "eval_later"
    evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", *tiny_run(synth_root, ev_dir, *WANDB, shrink_model=False)]))
    ev = run_files(ev_dir)[0]
    info, train_info = read_run(ev), read_run(job)
    assert info["job_type"] == "eval" and info["group"] == group and info["project"] == "dash_proj"
    assert f"eval-of:{train_info['id']}" in info["tags"]
    cfg_back = read_config(ev)
    assert cfg_back["train_run_id"] == train_info["id"] and cfg_back["ckpt_step"] == steps
    later = [r for r in read_history(ev) if "eval/synthfaces_self/l1" in r]
    assert later and later[0]["trainer/global_step"] == steps


def test_model_diagnostics_are_logged_at_the_step_and_summarised(tmp_path):
    """log_final_metrics: a method's diagnostics (names listed in metrics.json) reach the loggers at the given step."""
    from eval.dashboard import log_final_metrics

    class Recorder:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step):
            self.calls.append((step, dict(metrics)))

    rec = Recorder()
    result = {"protocol": "p", "protocol_hash": "h", "metrics": {"l1": 0.1, "motion_err_prior": 1.5, "lat_cos": 0.2,
                                                                 "nan_metric": float("nan")},
              "model_diagnostics": {"names": ["motion_err_prior"]}, "model_stats": ["lat_cos"]}
    log_final_metrics([rec], result, step=60)
    assert rec.calls == [(60, {"eval/p/motion_err_prior": 1.5, "eval/p/lat_cos": 0.2})]


def test_sweep_group_is_unique_per_invocation():
    from eval.dashboard import sweep_group

    a = sweep_group("runs/sweeps/mrfa_refine_iters/2026-01-01_00-00-00")
    b = sweep_group("runs/sweeps/mrfa_refine_iters/2026-01-02_00-00-00")
    assert a == "mrfa_refine_iters-2026-01-01_00-00-00" and a != b


@pytest.mark.slow
def test_cli_multirun_puts_jobs_and_table_in_one_group(synth_root, tmp_path):
    """The real Hydra multirun (job dirs under the sweep dir, table written by the end callback): ~60 s."""
    from experiments.wandb_offline import read_run, run_files

    sweep = tmp_path / "sweeps" / "tiny" / "T1"
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "experiments.train", "-m", "experiment=baseline_direct", "debug=fast",
                          f"data.root={synth_root}", "data.synth=null", "model.base_channels=4", "model.num_down=2",
                          "logger=wandb", "axes=[model.optimizer.lr]", "sweep_name=tiny", "model.optimizer.lr=1e-3,2e-3",
                          "+hydra.callbacks.table._target_=eval.table.SweepTableCallback", "trainer.max_steps=3",
                          f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[progress] sweep job 1/2 starting" in out.stdout and "[progress] sweep: 2/2 jobs done" in out.stdout
    infos = [read_run(f) for f in run_files(sweep)]
    assert sorted(i["job_type"] for i in infos) == ["table", "train", "train"]
    assert {i["group"] for i in infos} == {"tiny-T1"}
