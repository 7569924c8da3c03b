"""Entry points end to end on a small SynthFaces set: train → checkpoint → evaluate, W&B read-back, exact resume."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import tiny_run

REPO = Path(__file__).resolve().parents[1]


def csv_losses(run_dir: Path) -> pd.Series:
    frames = [pd.read_csv(p) for p in sorted((run_dir / "csv").glob("version_*/metrics.csv"))]
    df = pd.concat(frames)
    df = df[df["train/loss"].notna()]
    return df.set_index("step")["train/loss"].sort_index()


def test_train_then_evaluate_writes_checkpoint_config_and_metrics(compose_cfg, synth_root, tmp_path):
    from experiments.train import train

    run = tmp_path / "run"
    cfg = compose_cfg("train", ["experiment=baseline_direct", *tiny_run(synth_root, run, "logger=csv")])
    train(cfg)
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "config.yaml").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"] == "synthfaces_self" and len(metrics["protocol_hash"]) == 64
    assert {"l1", "psnr", "ssim"} <= set(metrics["metrics"])
    assert 0 < metrics["metrics"]["l1"] < 1


def test_extra_protocols_join_the_runs_metrics_and_its_table_row(compose_cfg, synth_root, tmp_path):
    """`extra_eval.<name>` (a second protocol from the eval_protocol group) is evaluated after the main one into
    run/eval/<name>/, merged into run/metrics.json as <name>/<metric> columns, and the table shows one row."""
    from eval.table import find_runs, make_table
    from experiments.train import train

    run = tmp_path / "run"
    cfg = compose_cfg("train", ["experiment=baseline_direct", "+eval_protocol@extra_eval.cross=synthfaces_cross",
                                "extra_eval.cross.metrics=[l1,psnr]", "extra_eval.cross.max_videos=2",
                                "extra_eval.cross.num_frames=4", "axes=[model.name]",
                                *tiny_run(synth_root, run, "logger=csv")])
    train(cfg)
    main = json.loads((run / "metrics.json").read_text())
    cross = json.loads((run / "eval" / "cross" / "metrics.json").read_text())
    assert main["protocol"] == "synthfaces_self" and cross["protocol"] == "synthfaces_cross"
    assert main["extra_protocols"]["cross"]["protocol_hash"] == cross["protocol_hash"] != main["protocol_hash"]
    assert main["metrics"]["cross/l1"] == cross["metrics"]["l1"]
    assert main["metrics"]["cross/psnr"] == cross["metrics"]["psnr"]
    assert main["metrics"]["cross/l1"] != main["metrics"]["l1"]          # another test set, another number
    assert find_runs([tmp_path]) == [run]                                 # eval/cross is not a run of its own
    table = make_table([run], tmp_path / "table", use_wandb=False)["md"].read_text()
    header = next(ln for ln in table.splitlines() if ln.startswith("| model.name"))
    assert header.index("| l1 ↓") < header.index("| ssim ↑") < header.index("| cross/l1 ↓") < header.index("| cross/psnr ↑")
    assert "protocol `cross`" in table


def test_extra_protocol_named_like_the_main_one_is_rejected(compose_cfg, synth_root, tmp_path):
    from experiments.runtime import ConfigError, validate

    cfg = compose_cfg("train", ["experiment=baseline_direct", "+eval_protocol@extra_eval.synthfaces_self=synthfaces_self",
                                *tiny_run(synth_root, tmp_path / "r")])
    with pytest.raises(ConfigError, match="extra_eval.synthfaces_self"):
        validate(cfg)


def test_wandb_offline_run_reads_back_the_logged_losses(compose_cfg, synth_root, tmp_path):
    from experiments.train import train
    from experiments.wandb_offline import read_config, read_history

    run = tmp_path / "run"
    cfg = compose_cfg("train", ["experiment=baseline_direct", "evaluate_after_train=false",
                                *tiny_run(synth_root, run, "logger=wandb", "logger.wandb.mode=offline",
                                          "trainer.max_steps=4", "trainer.val_check_interval=100")])
    train(cfg)
    rows = read_history(run / "wandb")
    wandb_losses = {r["trainer/global_step"] if "trainer/global_step" in r else r["_step"]: r["train/loss"]
                    for r in rows if "train/loss" in r}
    assert len(wandb_losses) == 4
    csv = csv_losses(run)
    assert sorted(wandb_losses.values()) == pytest.approx(sorted(csv.values), abs=1e-6)
    assert read_config(run / "wandb")["model"]["name"] == "direct"


def test_resume_continues_exactly(compose_cfg, synth_root, tmp_path):
    """2N steps in one go == N steps, then resume=true for N more: same weights and same logged losses."""
    from experiments.train import train

    n = 3
    common = ["experiment=baseline_direct", "evaluate_after_train=false", "logger=csv",
              f"trainer.checkpoint_every_n_steps={n}", "trainer.val_check_interval=1000", "model.optimizer.lr=1e-3"]
    full, split = tmp_path / "full", tmp_path / "split"
    train(compose_cfg("train", [*common, *tiny_run(synth_root, full, f"trainer.max_steps={2 * n}")]))
    train(compose_cfg("train", [*common, *tiny_run(synth_root, split, f"trainer.max_steps={n}")]))
    train(compose_cfg("train", [*common, *tiny_run(synth_root, split, f"trainer.max_steps={2 * n}",
                                                   "resume=true")]))

    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * n
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, atol=1e-6, rtol=0)
    la, lb = csv_losses(full), csv_losses(split)
    assert len(la) == len(lb) == 2 * n
    assert list(lb.values) == pytest.approx(list(la.values), abs=1e-6)
    # and training really moved the weights (the comparison above is not between two untouched inits)
    from experiments.runtime import seed_everything
    from lit_models.registry import build_model

    cfg = compose_cfg("train", [*common, *tiny_run(synth_root, full)])
    seed_everything(cfg.seed)
    init = build_model(cfg.model).state_dict()
    assert max((init[k] - v).abs().max().item() for k, v in a["state_dict"].items()) > 1e-4


def test_resume_without_checkpoint_names_the_missing_file(compose_cfg, synth_root, tmp_path):
    from experiments.train import train

    cfg = compose_cfg("train", ["experiment=baseline_direct",
                                *tiny_run(synth_root, tmp_path / "none", "resume=true")])
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        train(cfg)


def test_cli_copy_source_baseline_end_to_end(synth_root, tmp_path):
    """The real CLI (Hydra main): copy-source needs no training and lands in a unique run dir with metrics."""
    env = {"PORTRAITLAB_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "experiments.train", "experiment=baseline_copy_source", "debug=fast",
                          f"data.root={synth_root}", "data.synth=null", "logger=csv"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("run directory:"))
    run = Path(line.split(":", 1)[1].strip())
    assert run.is_relative_to(tmp_path / "runs" / "baseline_copy_source")
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["l1"] > 0 and metrics["ssim"] < 1
