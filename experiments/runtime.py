"""What every entry point shares, by concern, under one import (``from experiments import runtime``):

- ``experiments.validation``: ``validate`` and the checks it runs, ``ConfigError``;
- ``experiments.rundir``: the run directory, its lock, ``config.yaml``, ``train_done.json``, seeding;
- ``experiments.loggers``: the ``logger`` group and the W&B run's identity;
- ``experiments.callbacks``: the lab's training callbacks and the ``callbacks`` group;
- ``experiments.trainer``: the strategy, the Trainer, the SLURM launcher's resolvers;
- ``experiments.cli``: logging set-up and one-line user errors;
- ``experiments.preemption``: the preemption protocol.
"""
from __future__ import annotations

from experiments.callbacks import (FiniteCheck, NonFiniteTrainingError, RNGStateCallback, SampleIndexRecorder,
                                   build_callbacks)
from experiments.cli import setup_logging, short_errors
from experiments.loggers import build_loggers, finish_loggers, is_wandb, wandb_identity, wandb_run_dir
from experiments.rundir import (DONE_FILE, RANK_VARS, finished_run, in_multirun, mark_finished, resolve_run_dir,
                                run_dir_lock, save_config, seed_everything, sweep_dir, task_overrides)
from experiments.trainer import (_LAB_TRAINER_KEYS, atomic_checkpoint_io, build_strategy, build_trainer, fsdp_class,
                                 register_launcher_resolvers, slurm_gpus, slurm_tasks)
from experiments.validation import (CHOICES, WANDB_MODES, ConfigError, check_callbacks, check_data_root,
                                    check_loggers, check_resolution, check_trainer_keys, trainer_kwargs, validate)

__all__ = [
    "CHOICES", "DONE_FILE", "RANK_VARS", "WANDB_MODES", "_LAB_TRAINER_KEYS", "ConfigError", "FiniteCheck",
    "NonFiniteTrainingError", "RNGStateCallback", "SampleIndexRecorder", "atomic_checkpoint_io", "build_callbacks",
    "build_loggers", "build_strategy", "build_trainer", "check_callbacks", "check_data_root", "check_loggers",
    "check_resolution", "check_trainer_keys", "finish_loggers", "finished_run", "fsdp_class", "in_multirun",
    "is_wandb", "mark_finished", "register_launcher_resolvers", "resolve_run_dir", "run_dir_lock", "save_config",
    "seed_everything", "setup_logging", "short_errors", "slurm_gpus", "slurm_tasks", "sweep_dir", "task_overrides",
    "trainer_kwargs", "validate", "wandb_identity", "wandb_run_dir",
]
