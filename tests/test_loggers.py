"""The `logger` config group: `name: {_target_: <Lightning Logger>, ...}` entries built with hydra.utils.instantiate
(experiments.runtime.build_loggers), so any Lightning logger works from the command line; `logger.<name>=null`
switches one off; a bad entry fails naming `logger.<name>`; the W&B entry still gets the lab's group / job type /
tags and keeps its id and group on resume."""
from __future__ import annotations

import struct
from pathlib import Path

import pandas as pd
import pytest
from hydra.errors import ConfigCompositionException

from helpers import tiny_run


def csv_losses(run_dir: Path) -> dict[int, float]:
    df = pd.concat([pd.read_csv(p) for p in sorted((run_dir / "csv").glob("version_*/metrics.csv"))])
    df = df[df["train/loss"].notna()]
    return {int(s): float(v) for s, v in zip(df["step"], df["train/loss"])}


def tensorboard_scalars(event_file: Path) -> dict[str, dict[int, float]]:
    """Scalars of one TensorBoard event file (TFRecord framing: u64 length, u32 crc, Event proto, u32 crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    data, pos = event_file.read_bytes(), 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, {})[int(event.step)] = float(v.simple_value)
    return out


@pytest.mark.parametrize("overrides, expected", [
    (["logger=wandb"], ["CSVLogger", "WandbLogger"]),            # the default: W&B with a CSV logger beside it
    (["logger=wandb", "logger.wandb=null"], ["CSVLogger"]),
    (["logger=wandb", "logger.csv=null"], ["WandbLogger"]),
    (["logger=wandb", "logger.wandb.mode=disabled"], ["CSVLogger"]),
    (["logger=csv"], ["CSVLogger"]),
    (["logger=none"], []),
    (["logger=many_loggers"], ["CSVLogger", "WandbLogger", "TensorBoardLogger"]),
    (["logger=[csv,tensorboard]"], ["CSVLogger", "TensorBoardLogger"]),
])
def test_logger_group_options_and_null_entries(compose_cfg, tmp_path, overrides, expected):
    from experiments.runtime import build_loggers, finish_loggers, validate

    cfg = compose_cfg("train", ["debug=fast", f"run_dir={tmp_path}", *overrides])
    validate(cfg)
    loggers = build_loggers(cfg, tmp_path)
    try:
        assert [type(lg).__name__ for lg in loggers] == expected
        for lg in loggers:   # the lab's save_dir: the run directory
            assert Path(lg.save_dir) == tmp_path, type(lg).__name__
        # W&B bookkeeping only when a W&B logger was built
        assert (tmp_path / "wandb_id.txt").exists() == ("WandbLogger" in expected)
        assert (tmp_path / "wandb_run.json").exists() == ("WandbLogger" in expected)
    finally:
        finish_loggers(loggers)


def test_debug_fast_keeps_csv_only_unless_the_command_line_picks_a_logger(compose_cfg):
    assert list(compose_cfg("train", ["debug=fast"]).logger) == ["csv"]
    assert list(compose_cfg("train", ["debug=fast", "logger=wandb"]).logger) == ["csv", "wandb"]
    assert list(compose_cfg("train", []).logger) == ["csv", "wandb"]
    assert dict(compose_cfg("animate", []).logger) == {}


@pytest.mark.parametrize("override, message", [
    ("+logger.mine={name:x}", r"logger\.mine needs a _target_"),
    ("+logger.mine={_target_:torch.nn.Identity}", r"logger\.mine\._target_='torch\.nn\.Identity' is not a Lightning logger"),
    ("+logger.mine={_target_:lightning.pytorch.loggers.NoSuchLogger}", r"logger\.mine\._target_=.* cannot be imported"),
    ("+logger.wandb.projetc=x", r"logger\.wandb\.projetc is not an argument of .*WandbLogger \(did you mean "
                                r"logger\.wandb\.project\?\)"),
    ("+logger.csv.flush_logs_every_n_step=5", r"logger\.csv\.flush_logs_every_n_step .*did you mean "
                                              r"logger\.csv\.flush_logs_every_n_steps"),
    ("+logger.wandb.id=abc", r"logger\.wandb\.id is set by the lab"),
    ("logger.wandb.mode=onlin", r"logger\.wandb\.mode='onlin' is not one of"),
    ("+logger.w2={_target_:lightning.pytorch.loggers.WandbLogger}", r"logger\.wandb and logger\.w2 are both W&B"),
])
def test_bad_logger_entries_fail_naming_the_key(compose_cfg, tmp_path, override, message):
    from experiments.runtime import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg("train", [f"run_dir={tmp_path}", override]))


def test_logger_typos_fail_at_compose_time_and_constructor_errors_name_the_entry(compose_cfg, tmp_path):
    from experiments.runtime import ConfigError, build_loggers, validate

    with pytest.raises(ConfigCompositionException, match=r"logger\.wandb\.projetc"):
        compose_cfg("train", ["logger.wandb.projetc=x"])
    # a valid entry whose constructor fails (MLflow is not installed) is a ConfigError naming it, at build time
    cfg = compose_cfg("train", ["debug=fast", f"run_dir={tmp_path}",
                                "+logger.ml={_target_:lightning.pytorch.loggers.MLFlowLogger,experiment_name:x}"])
    validate(cfg)
    with pytest.raises(ConfigError, match=r"logger\.ml: cannot build lightning\.pytorch\.loggers\.MLFlowLogger"):
        build_loggers(cfg, tmp_path)


def test_extra_lightning_logger_from_the_command_line_writes_its_files(compose_cfg, synth_root, tmp_path):
    """`+logger.tb={_target_: TensorBoardLogger}` with no code change: event files under the run directory holding
    the same training losses as the CSV log."""
    from experiments.train import train

    run = tmp_path / "run"
    cfg = compose_cfg("train", ["experiment=baseline_direct", "evaluate_after_train=false",
                                *tiny_run(synth_root, run, "trainer.max_steps=3", "trainer.val_check_interval=100",
                                          "+logger.tb={_target_:lightning.pytorch.loggers.TensorBoardLogger,name:tb}")])
    train(cfg)
    events = sorted((run / "tb").glob("version_0/events.out.tfevents.*"))
    assert len(events) == 1
    tb = tensorboard_scalars(events[0])
    csv = csv_losses(run)
    assert len(csv) == 3 and tb["train/loss"] == pytest.approx(csv, abs=1e-6)


def test_wandb_entry_gets_group_job_type_tags_and_resume_keeps_id_and_group(compose_cfg, synth_root, tmp_path):
    """The W&B entry's own keys (project, tags) reach the run beside the lab's (group, job type, axis/seed tags);
    `resume=true` continues the same W&B id and keeps its group even when the group setting changed."""
    from experiments.train import train
    from experiments.wandb_offline import read_run, run_files

    run = tmp_path / "run"
    common = ["experiment=baseline_direct", "evaluate_after_train=false", "axes=[model.optimizer.lr]", "model.optimizer.lr=0.002",
              "trainer.val_check_interval=100", "trainer.checkpoint_every_n_steps=2",
              *tiny_run(synth_root, run, "logger=wandb", "logger.wandb.mode=offline",
                        "logger.wandb.project=lg_proj", "logger.wandb.tags=[mine]")]
    cfg = compose_cfg("train", [*common, "trainer.max_steps=2"])
    assert cfg.name == "baseline_direct"
    train(cfg)
    first = [read_run(f) for f in run_files(run)]
    assert len(first) == 1
    info = first[0]
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert info["id"] == run_id and info["project"] == "lg_proj" and info["job_type"] == "train"
    assert info["group"] == "baseline_direct"    # no sweep: the experiment name
    assert set(info["tags"]) == {"model.optimizer.lr=0.002", "seed=0", "mine"}
    train(compose_cfg("train", [*common, "trainer.max_steps=4", "resume=true", "logger.wandb.group=elsewhere"]))
    runs = [read_run(f) for f in run_files(run)]
    assert len(runs) == 2 and {r["id"] for r in runs} == {run_id}
    assert {r["group"] for r in runs} == {"baseline_direct"} and {r["job_type"] for r in runs} == {"train"}
    assert csv_losses(run).keys() >= {0, 1, 2, 3}     # the resumed run trained on


def test_repo_wandb_runs_follow_the_wandb_entry(compose_cfg):
    """The table / compare / personalize W&B runs read the logger group's W&B entry (eval.dashboard.wandb_settings):
    none without one, its project / group / mode with one (dryrun → offline)."""
    from eval.dashboard import wandb_settings
    from eval.table import SweepTableCallback

    cfg = compose_cfg("train", ["logger.wandb.project=p2", "logger.wandb.group=g2", "logger.wandb.mode=dryrun"],
                      return_hydra_config=True)
    ws = wandb_settings(cfg.logger)
    assert (ws["entry"], ws["project"], ws["group"], ws["mode"]) == ("wandb", "p2", "g2", "offline")
    assert SweepTableCallback._wandb_on(cfg)
    table = SweepTableCallback.wandb_settings(cfg)
    assert (table["project"], table["group"], table["mode"]) == ("p2", "g2", "offline")
    for off in (["logger=csv"], ["logger=none"], ["logger.wandb=null"], ["logger.wandb.mode=disabled"]):
        cfg = compose_cfg("train", off, return_hydra_config=True)
        assert not SweepTableCallback._wandb_on(cfg), off
