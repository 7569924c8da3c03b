"""What every entry point shares: run directories, validation, seeding, loggers, callbacks, the Trainer."""
from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.utils import atomic_write_text

log = logging.getLogger("portraitlab")

CHOICES = {
    "data.layout": ("auto", "fomm", "nested", "frames", "shards"),
    "data.crop": ("none", "center", "meta"),
    "data.decoder": ("pyav", "decord"),
    "trainer.precision": ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"),
    "logger.mode": ("offline", "online", "disabled", "dryrun"),  # dryrun: W&B's old name for offline
    "eval_protocol.mode": ("self", "cross", "synth_cross"),
}


class ConfigError(ValueError):
    """A config value is out of range; the message names the offending key."""


def validate(cfg: DictConfig) -> None:
    """Semantic checks beyond the structured schema (which already rejects unknown keys and wrong types)."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and str(value) not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    for key in ("data.batch_size", "data.resolution", "trainer.accumulate_grad_batches"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and int(value) < 1:
            raise ConfigError(f"{key}={value} must be >= 1")
    for key in [k for k in (cfg.get("model") or {}) if str(k).startswith("lambda_")]:
        if float(cfg.model[key]) < 0:
            raise ConfigError(f"model.{key}={cfg.model[key]} must be >= 0 (0 skips the term)")
    model_res = OmegaConf.select(cfg, "model.resolution", default=None)
    data_res = OmegaConf.select(cfg, "data.resolution", default=None)
    if model_res is not None and data_res is not None and int(model_res) != int(data_res):
        raise ConfigError(f"model.resolution={model_res} differs from data.resolution={data_res}")
    if OmegaConf.select(cfg, "model.driving_appearance", default=None) == "cross_identity" and \
            not OmegaConf.select(cfg, "data.use_synth_cross_driving", default=False):
        raise ConfigError("model.driving_appearance=cross_identity needs data.use_synth_cross_driving=true (SynthFaces "
                          "renders the driving motion with another identity; see experiment=xportrait_cross_identity)")
    for name, proto in (cfg.get("extra_eval") or {}).items():
        if str(proto.mode) not in CHOICES["eval_protocol.mode"]:
            raise ConfigError(f"extra_eval.{name}.mode={proto.mode!r} is not one of {', '.join(CHOICES['eval_protocol.mode'])}")
        if "/" in str(name) or str(name) == str(cfg.eval_protocol.name):
            raise ConfigError(f"extra_eval.{name}: the name must differ from the main protocol's and contain no '/'")
    for key in cfg.get("axes") or []:
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"axes names {key!r}, which is not a config key")


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run's unique directory: `run_dir=` when given (resume), else Hydra's output directory."""
    run_dir = OmegaConf.select(cfg, "run_dir", default=None)
    if run_dir in (None, "???") or OmegaConf.is_missing(cfg, "run_dir"):
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise ConfigError("run_dir is not set (pass run_dir=PATH when composing outside the CLI)")
        run_dir = HydraConfig.get().runtime.output_dir
    path = Path(run_dir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    with_flag = OmegaConf.is_readonly(cfg)
    OmegaConf.set_readonly(cfg, False)
    cfg.run_dir = str(path)
    OmegaConf.set_readonly(cfg, with_flag)
    return path


def task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config of the run (what `eval.table` groups by), written atomically."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container["overrides"] = task_overrides()
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(container)))


def seed_everything(seed: int) -> None:
    L.seed_everything(seed, workers=True, verbose=False)


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers: list = []
    lc = cfg.logger
    if lc.use_csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
    if lc.use_wandb and lc.mode != "disabled":
        id_file = run_dir / "wandb_id.txt"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            import uuid

            run_id = uuid.uuid4().hex[:8]
            atomic_write_text(id_file, run_id)
        group = lc.group or cfg.get("sweep_name") or cfg.name
        tags = list(lc.tags) + [f"{k}={OmegaConf.select(cfg, k)}"[:64] for k in cfg.get("axes") or []]
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(project=lc.project, entity=lc.entity, name=f"{cfg.name}-{run_dir.name}",
                                   save_dir=str(run_dir), id=run_id, group=group, tags=tags, offline=lc.mode in ("offline", "dryrun"),
                                   mode="offline" if lc.mode == "dryrun" else lc.mode, resume="allow", log_model=lc.log_model,
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def wandb_run_dir(loggers: list) -> str | None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            return str(Path(logger.experiment.dir).parent)
    return None


class RNGStateCallback(L.Callback):
    """Saves and restores the Python/NumPy/torch RNG states in checkpoints, so `resume=true` continues exactly."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types and tensors only: Lightning loads checkpoints with weights_only=True
        state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                         int(has_gauss), float(gauss)],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class SampleIndexRecorder(L.Callback):
    """``trainer.record_sample_indices``: appends ``{"step", "index": [...]}`` per training batch to
    ``run_dir/samples/rank<r>.jsonl`` (the ``meta.index`` of each sample), so a DDP run can show which samples
    every rank consumed (disjoint strides of one stream) and a resumed run that it continued the stream."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "samples"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        index = (batch.get("meta") or {}).get("index") if isinstance(batch, dict) else None
        if index is None:
            return
        import json

        self.dir.mkdir(parents=True, exist_ok=True)
        values = index.tolist() if hasattr(index, "tolist") else list(index)
        with open(self.dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": int(trainer.global_step), "index": [int(v) for v in values]}) + "\n")


def _import_class(path: str) -> type:
    import importlib

    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"trainer.fsdp_wrap_modules / activation_checkpointing: cannot import {path!r} ({e})") from e


def build_strategy(tc: DictConfig):
    """``trainer.strategy`` as Lightning takes it: a registered name, or — for ``fsdp`` — an ``FSDPStrategy`` with
    the wrap / activation-checkpointing classes, sharding strategy and CPU offload of the trainer config (on CPU a
    subclass that runs torch's FSDP on gloo processes)."""
    name = str(tc.strategy)
    if name != "fsdp":
        if tc.get("activation_checkpointing") or tc.get("fsdp_wrap_modules"):
            raise ConfigError(f"trainer.activation_checkpointing / trainer.fsdp_wrap_modules need trainer.strategy=fsdp "
                              f"(got {name!r}; use trainer=fsdp)")
        return name
    from lightning.pytorch.strategies import FSDPStrategy

    allowed = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
    if str(tc.fsdp_sharding_strategy) not in allowed:
        raise ConfigError(f"trainer.fsdp_sharding_strategy={tc.fsdp_sharding_strategy!r} is not one of {', '.join(allowed)}")
    classes = {_import_class(p) for p in tc.fsdp_wrap_modules or []}
    recompute = {_import_class(p) for p in tc.activation_checkpointing or []}
    cls = FSDPStrategy
    if str(tc.accelerator) == "cpu":
        class CPUFSDPStrategy(FSDPStrategy):
            """FSDP on CPU processes (gloo): torch's FSDP runs there for small models (tests, dry runs); Lightning
            refuses the plain ``FSDPStrategy`` without a GPU (it checks the exact type), and its barrier passes
            CUDA device ids, which gloo has none of."""

            def _determine_device_ids(self):
                return None

            def _setup_model(self, model):
                from lightning.pytorch.strategies import fsdp as lfsdp
                from torch.distributed.fsdp import FullyShardedDataParallel

                if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
                    return super()._setup_model(model)
                model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                                 mixed_precision=self.mixed_precision_config,
                                                 sharding_strategy=self.sharding_strategy,
                                                 device_id=torch.device("cpu"), **self.kwargs)
                lfsdp._setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
                return model

        cls = CPUFSDPStrategy
    return cls(auto_wrap_policy=classes or None,
                        activation_checkpointing_policy=recompute or None,
                        sharding_strategy=str(tc.fsdp_sharding_strategy), cpu_offload=bool(tc.fsdp_cpu_offload),
                        state_dict_type="full")


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list):
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

    tc = cfg.trainer
    callbacks = [
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=tc.checkpoint_every_n_steps, save_last=True, save_top_k=1),
        RNGStateCallback(),
    ]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if tc.enable_progress_bar:
        callbacks.append(RichProgressBar(leave=True))
    if tc.get("record_sample_indices"):
        callbacks.append(SampleIndexRecorder(run_dir))
    return L.Trainer(
        default_root_dir=str(run_dir), accelerator=tc.accelerator, devices=tc.devices, strategy=build_strategy(tc),
        sync_batchnorm=bool(tc.get("sync_batchnorm", False)),
        num_nodes=tc.num_nodes, precision=tc.precision, max_steps=tc.max_steps, max_epochs=tc.max_epochs,
        val_check_interval=tc.val_check_interval, check_val_every_n_epoch=None,
        limit_val_batches=tc.limit_val_batches, log_every_n_steps=tc.log_every_n_steps,
        gradient_clip_val=tc.gradient_clip_val, accumulate_grad_batches=tc.accumulate_grad_batches,
        deterministic=tc.deterministic, enable_progress_bar=tc.enable_progress_bar,
        enable_model_summary=tc.enable_model_summary, num_sanity_val_steps=tc.num_sanity_val_steps,
        logger=loggers or False, callbacks=callbacks,
    )


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", stream=sys.stdout)
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def finish_loggers(loggers: list) -> None:
    """Close W&B runs (each multirun job is its own run) and flush file loggers."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            logger.finalize("success")
            if logger._experiment is not None:
                logger.experiment.finish()
            wandb.finish()
        else:
            logger.finalize("success")
