"""One CLI style (Hydra console scripts) and Trainer/callbacks built from config."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})


def _hydra_apps() -> set[str]:
    """``experiments.<module>:main`` for every function decorated with ``@hydra.main`` under experiments/."""
    apps = set()
    for path in sorted((ROOT / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and ast.unparse(d.func) == "hydra.main" for d in node.decorator_list):
                apps.add(f"experiments.{path.stem}:{node.name}")
    return apps


def test_every_hydra_entry_point_has_a_console_script_that_resolves():
    scripts = _scripts()
    apps = _hydra_apps()
    assert apps >= {"experiments.train:main", "experiments.evaluate:main", "experiments.animate:main"}
    missing = apps - set(scripts.values())
    assert not missing, f"@hydra.main apps without a [project.scripts] entry in pyproject.toml: {sorted(missing)}"
    for name, target in scripts.items():
        assert name.startswith("portraitlab-"), name
        module, _, attr = target.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        assert callable(fn), f"{name} = {target} is not callable"


def test_console_script_target_answers_hydra_completion():
    """What `portraitlab-train -sc install=bash` runs: the script's target with that argv, importing the package's
    configs as pkg://experiments.configs (not a file path: it needs experiments/configs/__init__.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    target = _scripts()["portraitlab-train"]
    module, _, attr = target.partition(":")
    code = f"import sys; sys.argv = ['portraitlab-train'] + sys.argv[1:]; from {module} import {attr}; {attr}()"
    out = subprocess.run([sys.executable, "-c", code, "-sc", "install=bash"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "complete" in out.stdout and "portraitlab-train" in out.stdout


# ---- any lightning.Trainer option, callbacks from the `callbacks/` group -----------------------------------------
def test_every_lightning_trainer_keyword_is_a_valid_trainer_key(compose_cfg, tmp_path):
    """`+trainer.<kw>` validates for every lightning.Trainer.__init__ keyword (except the four the lab builds), and a
    typo is still rejected with the nearest name (the Trainer's own keywords included)."""
    import inspect

    import lightning as L
    from omegaconf import open_dict

    from experiments.runtime import ConfigError, trainer_kwargs, validate

    real = [n for n in inspect.signature(L.Trainer.__init__).parameters if n != "self"]
    assert set(trainer_kwargs()) == set(real) and "profiler" in real
    cfg = compose_cfg("train", ["debug=fast", f"run_dir={tmp_path}"])
    reserved = {"default_root_dir", "logger", "callbacks", "plugins"}
    with open_dict(cfg.trainer):
        for kw in set(real) - reserved - set(cfg.trainer):
            cfg.trainer[kw] = None
    validate(cfg)   # none of them is "not a config key"
    for bad, hint in [("+trainer.max_step=10", "trainer.max_steps"), ("+trainer.profiller=simple", "trainer.profiler"),
                      ("+trainer.overfit_batch=1", "trainer.overfit_batches")]:
        with pytest.raises(ConfigError, match=rf"{bad[1:].split('=')[0]} is not a config key \(did you mean {hint}\?\)"):
            validate(compose_cfg("train", ["debug=fast", bad]))
    with pytest.raises(ConfigError, match=r"trainer\.logger is set by the lab; use the logger group"):
        validate(compose_cfg("train", ["debug=fast", "+trainer.logger=false"]))


def test_passthrough_trainer_options_reach_the_trainer(compose_cfg, tmp_path):
    """`+trainer.profiler=simple` reaches the Trainer (not dropped silently), and so does a `_target_` value built by
    hydra.utils.instantiate; without them the Trainer gets Lightning's default (no profiler)."""
    from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

    from experiments.runtime import build_trainer, validate

    base = ["debug=fast", "logger=none", f"run_dir={tmp_path}"]
    plain = build_trainer(compose_cfg("train", base), tmp_path, [])
    assert isinstance(plain.profiler, PassThroughProfiler) and plain.overfit_batches == 0
    cfg = compose_cfg("train", [*base, "+trainer.profiler=simple", "+trainer.overfit_batches=1"])
    validate(cfg)
    trainer = build_trainer(cfg, tmp_path, [])
    assert isinstance(trainer.profiler, SimpleProfiler) and trainer.overfit_batches == 1
    cfg = compose_cfg("train", [*base, "+trainer.profiler={_target_:lightning.pytorch.profilers.SimpleProfiler,"
                                       "filename:prof,extended:false}"])
    validate(cfg)
    prof = build_trainer(cfg, tmp_path, []).profiler
    assert isinstance(prof, SimpleProfiler) and prof.filename == "prof" and prof.extended is False


class RecordingTrainer:   # `trainer._target_` names a class: the lab's keys are out, its own objects are in
    def __new__(cls, **kwargs):
        import lightning as L

        trainer = L.Trainer(**kwargs)
        trainer.received = sorted(kwargs)
        return trainer


def test_trainer_is_instantiated_from_its_config_node(compose_cfg, tmp_path):
    """build_trainer = hydra.utils.instantiate(trainer node): `trainer._target_` picks the class, which gets the
    Lightning keys and the lab's built objects but none of the lab's own keys; a target that does not build a
    Trainer is a ConfigError naming trainer._target_."""
    from experiments.runtime import _LAB_TRAINER_KEYS, ConfigError, build_trainer

    base = ["debug=fast", "logger=none", f"run_dir={tmp_path}"]
    cfg = compose_cfg("train", [*base, f"trainer._target_={__name__}.RecordingTrainer", "trainer.max_steps=7"])
    trainer = build_trainer(cfg, tmp_path, [])
    assert trainer.max_steps == 7 and trainer.default_root_dir == str(tmp_path)
    assert {"callbacks", "plugins", "strategy", "logger", "max_steps", "precision"} <= set(trainer.received)
    assert not set(_LAB_TRAINER_KEYS) & set(trainer.received)
    cfg = compose_cfg("train", [*base, "trainer._target_=collections.OrderedDict"])
    with pytest.raises(ConfigError, match="trainer._target_"):
        build_trainer(cfg, tmp_path, [])


def test_callbacks_group_appends_instantiated_callbacks(compose_cfg, tmp_path):
    """`callbacks=[early_stopping,device_stats]` adds those callbacks (with their overrides) after the built-in ones;
    the default (`callbacks: none`) adds nothing; an entry without `_target_` fails validation naming it."""
    from lightning.pytorch.callbacks import DeviceStatsMonitor, EarlyStopping

    from experiments.runtime import ConfigError, build_trainer, validate

    base = ["debug=fast", "logger=none", f"run_dir={tmp_path}"]
    cfg = compose_cfg("train", base)
    assert dict(cfg.callbacks) == {}
    names = [type(c).__name__ for c in build_trainer(cfg, tmp_path, []).callbacks]
    cfg = compose_cfg("train", [*base, "callbacks=[early_stopping,device_stats]", "callbacks.early_stopping.patience=7"])
    validate(cfg)
    cbs = build_trainer(cfg, tmp_path, []).callbacks
    stop = [c for c in cbs if isinstance(c, EarlyStopping)]
    assert len(stop) == 1 and stop[0].patience == 7 and stop[0].monitor == "val/l1"
    assert sum(isinstance(c, DeviceStatsMonitor) for c in cbs) == 1
    assert sorted(type(c).__name__ for c in cbs) == sorted(names + ["EarlyStopping", "DeviceStatsMonitor"])
    for option in sorted(p.stem for p in (ROOT / "experiments" / "configs" / "callbacks").glob("*.yaml")):
        cfg = compose_cfg("train", [*base, f"callbacks={option}"])   # every option composes, validates and builds
        validate(cfg)
        assert len(build_trainer(cfg, tmp_path, []).callbacks) == len(names) + len(cfg.callbacks)
    with pytest.raises(ConfigError, match=r"callbacks\.mine needs a _target_"):
        validate(compose_cfg("train", [*base, "+callbacks.mine={patience:1}"]))


def test_early_stopping_from_the_callbacks_group_stops_training(compose_cfg, synth_root, tmp_path):
    """The callback is live, not just built: EarlyStopping demanding an impossible improvement (min_delta=10 on
    val/l1, patience 1) ends a 10-step run at the second validation (step 4); without it the run reaches step 10."""
    from experiments.runtime import build_trainer
    from experiments.train import build_datamodule
    from lit_models.registry import build_model

    torch.set_num_threads(1)
    over = [f"data.root={synth_root}", "data.synth=null", "debug=fast", "logger=none",
            "experiment=baseline_direct", "model.base_channels=4", "model.num_down=2", "trainer.max_steps=10",
            "trainer.val_check_interval=2", "trainer.checkpoint_every_n_steps=100"]
    steps = []
    for i, extra in enumerate(([], ["callbacks=early_stopping", "callbacks.early_stopping.patience=1",
                                    "callbacks.early_stopping.min_delta=10"])):
        cfg = compose_cfg("train", [*over, *extra, f"run_dir={tmp_path / str(i)}"])
        trainer = build_trainer(cfg, tmp_path / str(i), [])
        trainer.fit(build_model(cfg.model), datamodule=build_datamodule(cfg.data))
        steps.append(trainer.global_step)
    assert steps == [10, 4]
