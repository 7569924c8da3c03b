"""The entry points' shared runtime by concern: the datamodule from ``data._target_``, the import-by-path errors,
the checks done once (in ``validate``), the one W&B predicate, and ``experiments.runtime`` naming the same objects
as the concern modules."""
from __future__ import annotations

import pytest

from datamodules.datamodule import VideoClipDataModule


class RecordingDataModule(VideoClipDataModule):   # `data._target_` names it: built with the whole data node
    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg, **kwargs)
        self.built_from = cfg


def test_datamodule_is_built_from_data_target(compose_cfg, synth_root):
    from experiments.train import build_datamodule

    base = ["debug=fast", "run_dir=/nonexistent", f"data.root={synth_root}", "data.synth=null"]
    cfg = compose_cfg("train", base)
    assert cfg.data._target_ == "datamodules.VideoClipDataModule"
    assert type(build_datamodule(cfg.data)) is VideoClipDataModule
    cfg = compose_cfg("train", [*base, f"data._target_={__name__}.RecordingDataModule"])
    dm = build_datamodule(cfg.data)
    assert type(dm) is RecordingDataModule and dm.built_from is cfg.data and dm.cfg.root == str(synth_root)


@pytest.mark.parametrize("target, message", [
    ("datamodules.NoSuchDataModule", r"data\._target_='datamodules\.NoSuchDataModule' cannot be imported"),
    ("collections.OrderedDict", r"data\._target_='collections\.OrderedDict' is not a LightningDataModule"),
    ("", r"data\._target_ is not set"),
])
def test_bad_data_target_is_a_config_error_naming_it(compose_cfg, target, message):
    from experiments.runtime import ConfigError
    from experiments.train import build_datamodule

    cfg = compose_cfg("train", ["debug=fast", "run_dir=/nonexistent", f"data._target_={target}"])
    with pytest.raises(ConfigError, match=message):
        build_datamodule(cfg.data)


def test_datamodules_build_datamodule_is_the_shared_builder(compose_cfg, synth_root):
    """eval and benchmarks build the datamodule through ``datamodules.build_datamodule`` (they cannot import
    experiments): the same class resolution, its own error type."""
    from datamodules import build_datamodule
    from datamodules.build import DataTargetError

    cfg = compose_cfg("train", ["debug=fast", "run_dir=/nonexistent", f"data.root={synth_root}", "data.synth=null",
                                f"data._target_={__name__}.RecordingDataModule"])
    assert type(build_datamodule(cfg.data)) is RecordingDataModule
    with pytest.raises(DataTargetError, match=r"data\._target_"):
        build_datamodule({"_target_": "os.path"})


def test_fsdp_class_paths_import_with_a_config_error_naming_the_key():
    import torch

    from experiments.runtime import ConfigError, fsdp_class

    assert fsdp_class("torch.nn.Linear") is torch.nn.Linear
    with pytest.raises(ConfigError, match=r"trainer\.fsdp_wrap_modules .*'torch\.nn\.NoSuchBlock' cannot be "
                                          r"imported as a class \(Are you sure that 'NoSuchBlock' is importable"):
        fsdp_class("torch.nn.NoSuchBlock")
    with pytest.raises(ConfigError, match=r"'os\.sep' cannot be imported as a class \(Located non-class"):
        fsdp_class("os.sep")


def test_lookups_by_path_leave_no_hydra_error_log(caplog):
    """The ConfigError is the message: Hydra's own "Error getting class" log line is not added."""
    import logging

    from experiments.runtime import ConfigError, fsdp_class

    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ConfigError):
            fsdp_class("torch.nn.NoSuchBlock")
    assert not [r for r in caplog.records if r.name.startswith("hydra")]
    assert not logging.getLogger("hydra.utils").disabled


def test_checks_are_done_once_in_validate(compose_cfg, tmp_path):
    """The reserved trainer keys, callback ``_target_`` and logger entries fail in ``validate``; the builders
    (run after it by every entry point) do not repeat the checks."""
    from omegaconf import open_dict

    from experiments import callbacks, loggers, trainer
    from experiments.runtime import ConfigError, validate

    for override, message in [("+trainer.plugins=[]", r"trainer\.plugins is set by the lab"),
                              ("+callbacks.mine={patience:1}", r"callbacks\.mine needs a _target_"),
                              ("+logger.mine={name:x}", r"logger\.mine needs a _target_")]:
        with pytest.raises(ConfigError, match=message):
            validate(compose_cfg("train", ["debug=fast", f"run_dir={tmp_path}", override]))
    for module, name in [(trainer, "check_trainer_passthrough"), (loggers, "check_loggers"),
                         (callbacks, "check_callbacks")]:
        assert not hasattr(module, name), f"{module.__name__}.{name}"
    # an entry without _target_ that reached build_callbacks anyway is still an error naming it
    cfg = compose_cfg("train", ["debug=fast", f"run_dir={tmp_path}"])
    with open_dict(cfg):
        cfg.callbacks = {"mine": {"patience": 1}}
    with pytest.raises(ConfigError, match=r"callbacks\.mine: None is not a lightning Callback"):
        callbacks.build_callbacks(cfg)


def test_one_wandb_predicate_for_entries_and_built_loggers(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from eval.dashboard import is_wandb_logger
    from experiments.loggers import is_wandb

    class MyWandb(WandbLogger):
        pass

    assert is_wandb_logger(WandbLogger) and is_wandb_logger(MyWandb) and not is_wandb_logger(CSVLogger)
    assert not is_wandb(CSVLogger(save_dir=str(tmp_path)))
    assert is_wandb(MyWandb.__new__(MyWandb)) and is_wandb(WandbLogger.__new__(WandbLogger))


def test_runtime_names_the_concern_modules_objects():
    from experiments import callbacks, cli, loggers, rundir, runtime, trainer, validation

    for module in (callbacks, cli, loggers, rundir, trainer, validation):
        for name in runtime.__all__:
            if name in vars(module) and getattr(vars(module)[name], "__module__", module.__name__) == module.__name__:
                assert getattr(runtime, name) is vars(module)[name], name
    assert runtime.ConfigError is validation.ConfigError and runtime.build_trainer is trainer.build_trainer
