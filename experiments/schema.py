"""Structured (dataclass) schemas for every config group, registered in Hydra's ConfigStore.

Each YAML in ``experiments/configs/<group>/`` starts its defaults list with the group's schema
(``<name>_schema`` for models, ``data_schema``, ``trainer_schema`` …), so an unknown or mistyped key fails at
compose time with the key's full name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from datamodules.config import DataConfig, SynthConfig
from eval.protocol import EvalProtocolConfig


class CkptWeights(StrEnum):
    """``ckpt_weights``: which weights of a checkpoint are served (``lit_models.registry.load_model``)."""

    auto = "auto"   # the checkpoint's state_dict: the EMA weights when trained with EMA
    ema = "ema"
    raw = "raw"


@dataclass
class TrainerConfig:
    """The ``lightning.Trainer`` arguments the lab sets, plus its own (checkpointing, FSDP, checks); multi-GPU /
    multi-node through Lightning's own strategies. Any other ``lightning.Trainer.__init__`` keyword is accepted as
    ``+trainer.<kw>=value`` (``+trainer.profiler=simple``) and passed through (``experiments.trainer.build_trainer``); a
    key that is neither is rejected with a "did you mean" hint."""

    # built with hydra.utils.instantiate (experiments.trainer.build_trainer): the lab's own keys below (checkpointing, checks,
    # FSDP details) are taken out, every other key is a keyword of this class
    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"          # auto | ddp | ddp_find_unused_parameters_true | fsdp | deepspeed_stage_2 ...
    num_nodes: int = 1
    precision: str = "32-true"      # 32-true | 16-mixed | bf16-mixed
    max_steps: int = 1000
    max_epochs: int = -1
    val_check_interval: Optional[int] = 500   # in training steps (check_val_every_n_epoch is set to None)
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    deterministic: Any = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    num_sanity_val_steps: int = 0
    checkpoint_every_n_steps: int = 500       # ModelCheckpoint(every_n_train_steps=...), plus last.ckpt
    keep_last_n: int = 1                      # how many of those rolling checkpoints stay (the newest N, plus last.ckpt)
    keep_every_n_steps: int = 0               # also keep keep-stepNNNNNNN.ckpt every k steps, never deleted (0: off)
    finite_check: bool = True       # stop at the first non-finite loss/parameter, before it is checkpointed
    detect_anomaly: bool = False    # torch anomaly mode (slow): names the op that made the first NaN gradient
    sync_batchnorm: bool = False              # DDP: BatchNorm statistics over the global batch (GPU only in torch)
    # trainer=fsdp (Lightning FSDPStrategy): the classes (dotted import paths) that become FSDP units, and those
    # recomputed in the backward pass (activation checkpointing; only stateless blocks: the diffusion methods'
    # self-attention reads a reference-feature bank); sharding FULL_SHARD | SHARD_GRAD_OP | NO_SHARD | HYBRID_SHARD
    fsdp_wrap_modules: list[str] = field(default_factory=list)
    activation_checkpointing: list[str] = field(default_factory=list)
    fsdp_sharding_strategy: str = "FULL_SHARD"
    fsdp_cpu_offload: bool = False
    # write run_dir/samples/rank<r>.jsonl: the training sample indices each rank consumed per step (DDP checks)
    record_sample_indices: bool = False


@dataclass
class SamplingRunConfig:
    """How ``animate`` / ``evaluate`` / ``compare`` run a model's sampling (the ``sampling=`` group selects presets
    of the model's sampler keys; these are run settings beside them)."""

    precision: str = "auto"         # auto (the model's official precision on CUDA, X-Portrait fp16; else fp32) | fp16 | bf16 | fp32


@dataclass
class RunConfig:
    """The top-level config of train / evaluate / animate."""

    model: Any = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    # Lightning loggers (config group `logger/`, lightning-hydra-template style): name -> {_target_: <Logger class>,
    # ...}, built with hydra.utils.instantiate (experiments.loggers.build_loggers); `logger.<name>=null` switches one off
    logger: dict[str, Any] = field(default_factory=dict)
    eval_protocol: EvalProtocolConfig = MISSING
    # further protocols evaluated after the main one (each into run_dir/eval/<name>/); their metrics join the main
    # metrics.json as "<name>/<metric>" columns. Add one from a YAML defaults list:
    #   - /eval_protocol@extra_eval.synthfaces_cross: synthfaces_cross
    extra_eval: dict[str, EvalProtocolConfig] = field(default_factory=dict)
    # extra Lightning callbacks (config group `callbacks/`, lightning-hydra-template style): name -> {_target_: ...},
    # built with hydra.utils.instantiate and appended after the built-in ones (`callbacks=early_stopping`)
    callbacks: dict[str, Any] = field(default_factory=dict)
    name: str = "run"               # experiment name (run directory and W&B group)
    seed: int = 0
    run_dir: str = "???"            # set by Hydra: one unique directory per run
    resume: bool = False            # continue run_dir/checkpoints/last.ckpt exactly
    ckpt: Optional[str] = None      # a checkpoint (evaluate / animate), or an untrained baseline's `model=` instead
    ckpt_weights: CkptWeights = CkptWeights.auto
    ckpts: list[str] = field(default_factory=list)  # compare: the checkpoints, the first is the baseline
    evaluate_after_train: bool = True
    sweep_name: Optional[str] = None
    axes: list[str] = field(default_factory=list)   # config keys that form the ablation axes (table columns)
    # the metric `python -m experiments.train` returns (Hydra sweepers such as Optuna optimise it); null = the main
    # protocol's first metric (eval_protocol.metrics[0]); `<name>/<metric>` for an extra_eval protocol's metric
    objective: Optional[str] = None
    # animate
    source: Optional[str] = None
    driving: Optional[str] = None
    out: Optional[str] = None
    relative_motion: bool = True   # FOMM's relative motion transfer (vs absolute)
    animate_crop: str = "center"   # center | face (dlib box, stable over the clip)
    max_frames: int = 0
    # animate / evaluate / compare: where the model runs (auto = CUDA when present); moved there once
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    sampling: SamplingRunConfig = field(default_factory=SamplingRunConfig)
    # the method's official input preprocessing (X-Portrait: full-frame 512² resize, driving warped onto the source
    # by FAN landmark boxes, patches on FAN landmarks; X-NeMo in animate: BlazeFace crops) | none (animate_crop only,
    # dlib landmarks) | auto (official for methods that define one, X-Portrait / X-NeMo; none otherwise).
    # animate.yaml / evaluate.yaml set auto; training-time evaluation keeps none
    preprocess: str = "none"
    best_frame: int = 0             # preprocess=official: the driving frame whose landmark box is matched to the source


def register_resolvers() -> None:
    """``${launch_pid:}``: the launching process (cached: one value per process), part of the sweep directory's
    name so that two sweeps launched in the same second (or microsecond) never share a directory."""
    OmegaConf.register_new_resolver("launch_pid", lambda: str(os.getpid()), use_cache=True, replace=True)


def register_configs() -> None:
    """Register every schema with Hydra's ConfigStore (idempotent)."""
    from lit_models.registry import discover

    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="data/synth", name="synth_schema", node=SynthConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="eval_protocol", name="protocol_schema", node=EvalProtocolConfig)
    for name, schema in discover().items():
        cs.store(group="model", name=f"{name}_schema", node=schema)
