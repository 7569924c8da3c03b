"""The Lightning Trainer from the ``trainer`` config node: its strategy (FSDP included), the lab's checkpoint and
check callbacks, the atomic checkpoint IO, and the SLURM launcher's resolvers."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.callbacks import FiniteCheck, RNGStateCallback, SampleIndexRecorder, build_callbacks
from experiments.preemption import Preemption, PreemptionCheckpoint
from experiments.validation import ConfigError, locate
from toolbox.progress import lightning_progress_bar, mode_for
from toolbox.io import atomic_write_bytes_with


def slurm_gpus(accelerator: Any, devices: Any) -> int:
    """``hydra.launcher.gpus_per_node`` from ``trainer.accelerator`` / ``trainer.devices``: the number of devices on
    a GPU trainer (a list counts its entries), 0 on CPU."""
    if str(accelerator) == "cpu":
        return 0
    return slurm_tasks(devices)


def slurm_tasks(devices: Any) -> int:
    """``hydra.launcher.tasks_per_node`` = ``trainer.devices`` (one SLURM task per device: Lightning's DDP reads
    the ranks SLURM gives the tasks). ``auto`` / -1 cannot be known before the job runs: set trainer.devices=N."""
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise ConfigError(f"trainer.devices={devices!r}: the SLURM launcher asks for gpus_per_node / tasks_per_node = "
                          f"trainer.devices before the job runs; set trainer.devices=N (GPUs per node)")
    return int(text)


def register_launcher_resolvers() -> None:
    """``${slurm_gpus:${trainer.accelerator},${trainer.devices}}`` / ``${slurm_tasks:${trainer.devices}}`` for
    ``hydra/launcher=slurm``."""
    OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("slurm_tasks", slurm_tasks, replace=True)


register_launcher_resolvers()


def atomic_checkpoint_io():
    """Lightning's ``TorchCheckpointIO`` writing through ``toolbox.io``: a temporary file in the checkpoint's own
    directory (same filesystem), fsync, then ``os.replace``. Lightning's own save goes through an fsspec
    transaction whose temporary file lives in the system temp dir, then ``shutil.move`` — a copy when that is
    another filesystem, where a full disk or a kill mid-copy leaves a truncated checkpoint under the real name."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
            if storage_options is not None:
                raise TypeError(f"{type(self).__name__} takes no storage_options")
            atomic_write_bytes_with(path, lambda f: torch.save(checkpoint, f))

    return AtomicCheckpointIO()


def fsdp_class(path: str) -> type:
    """A ``trainer.fsdp_wrap_modules`` / ``trainer.activation_checkpointing`` entry (a module class path), imported."""
    return locate(path, "trainer.fsdp_wrap_modules / activation_checkpointing entry", want_class=True)


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
    classes = {fsdp_class(p) for p in tc.fsdp_wrap_modules or []}
    recompute = {fsdp_class(p) for p in tc.activation_checkpointing or []}
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



# TrainerConfig keys the lab reads itself (its checkpoint callbacks, checks, FSDP strategy details): the Trainer node
# that hydra.utils.instantiate builds is the trainer config without them
_LAB_TRAINER_KEYS = ("checkpoint_every_n_steps", "keep_last_n", "keep_every_n_steps", "finite_check",
                     "fsdp_wrap_modules", "activation_checkpointing", "fsdp_sharding_strategy", "fsdp_cpu_offload",
                     "record_sample_indices")


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list, preemption: Optional[Preemption] = None):
    """The Trainer; with ``preemption`` (``Preemption``) a preemption signal becomes ``last.ckpt`` at the next step
    boundary (``PreemptionCheckpoint``), and Lightning's own SLURM auto-requeue (a checkpoint written inside the
    signal handler, mid-step) is off."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

    tc = cfg.trainer
    # checkpoints to compare over time: the newest `keep_last_n` (rolling, every `checkpoint_every_n_steps`) +
    # last.ckpt, and with `keep_every_n_steps` a permanent keep-stepNNNNNNN.ckpt every k steps
    callbacks = [
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=tc.checkpoint_every_n_steps, save_last=True,
                        save_top_k=int(tc.keep_last_n), monitor="step" if int(tc.keep_last_n) > 1 else None,
                        mode="max"),
        RNGStateCallback(),
    ]
    if int(tc.keep_every_n_steps) > 0:
        callbacks.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="keep-step{step:07d}",
                                         auto_insert_metric_name=False, every_n_train_steps=int(tc.keep_every_n_steps),
                                         save_top_k=-1, save_last=False))
    ema_decay = float(OmegaConf.select(cfg, "model.ema_decay", default=0.0) or 0.0)
    if ema_decay > 0:   # EMA weights (Lightning's weight averaging): checkpoints' state_dict and the evaluation use them
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=ema_decay))
    if tc.get("finite_check", True):
        callbacks.append(FiniteCheck())
    # the sample stream is resumable (datamodules: sample i = f(seed, i), started at the position)
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if tc.enable_progress_bar:   # a bar on a terminal; plain "step k/N … loss … ETA" lines in a log
        mode = mode_for(sys.stdout)
        if mode == "bar":
            callbacks.append(RichProgressBar(leave=True))
        elif mode == "lines":
            callbacks.append(lightning_progress_bar())
    if tc.get("record_sample_indices"):
        callbacks.append(SampleIndexRecorder(run_dir))
    callbacks += build_callbacks(cfg)
    plugins: list = [atomic_checkpoint_io()]
    if preemption is not None:
        callbacks.append(PreemptionCheckpoint(preemption))
        from lightning.fabric.plugins.environments import SLURMEnvironment

        if SLURMEnvironment.detect():
            plugins.append(SLURMEnvironment(auto_requeue=False))
    # `+trainer.<kw>` keys (validation: a lightning.Trainer argument the lab does not set) pass through
    node = OmegaConf.masked_copy(tc, [k for k in tc.keys() if k not in _LAB_TRAINER_KEYS])
    # the lab's parts: the run directory, the built strategy, loggers, callbacks and the atomic checkpoint IO
    built = dict(default_root_dir=str(run_dir), strategy=build_strategy(tc), check_val_every_n_epoch=None,
                 enable_progress_bar=tc.enable_progress_bar and any(isinstance(c, L.pytorch.callbacks.ProgressBar)
                                                                    for c in callbacks),
                 logger=loggers or False, callbacks=callbacks, plugins=plugins)
    try:
        trainer = instantiate(node, _convert_="all", **built)
    except Exception as e:   # hydra wraps the constructor's error: say which config it was
        raise ConfigError(f"trainer: cannot build {node.get('_target_')} ({e})") from e
    if not isinstance(trainer, L.Trainer):
        raise ConfigError(f"trainer._target_={node.get('_target_')} is not a lightning Trainer")
    return trainer

