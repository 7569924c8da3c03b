"""`python -m experiments.train experiment=NAME [key=value ...]` — train, then evaluate under the run's protocol.

Every run gets a unique directory (Hydra's output dir, or `run_dir=` to resume) holding `config.yaml` (resolved),
`checkpoints/` (with `last.ckpt`), `csv/` and `wandb/` logs, grids, and the evaluation's `metrics.json`.
`resume=true run_dir=PATH` continues `PATH/checkpoints/last.ckpt` exactly (weights, optimizer, RNG, data stream).
A sweep (`sweep=NAME`) is a Hydra multirun declared in one file; its end callback writes the ablation table. A killed
sweep continues with `resume=true hydra.sweep.dir=SWEEP_DIR`: finished jobs (`train_done.json` for the same
resolved config) are not redone, started ones resume from their `last.ckpt`, the others start.
One process writes a run directory at a time (`toolbox.locks.DirLock` on `run_dir/.lock`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments import runtime
from experiments.preemption import Preempted, Preemption, requeued
from experiments.schema import register_configs

log = logging.getLogger("portraitlab.train")
register_configs()


def build_datamodule(data_cfg: DictConfig):
    """The datamodule ``data._target_`` names, built with the data node; a ConfigError naming ``data._target_``
    when that is not an importable LightningDataModule class."""
    from datamodules.build import DataTargetError, datamodule_class

    try:
        cls = datamodule_class(data_cfg)
    except DataTargetError as err:
        raise runtime.ConfigError(str(err)) from None
    return cls(data_cfg)


def save_untrained_checkpoint(model, path: Path) -> Path:
    """A parameter-free baseline still gets a checkpoint, so `evaluate ckpt=` and `compare` treat it like any run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(), "global_step": 0}, tmp)
    tmp.replace(path)
    return path


def sampling_kwargs(cfg: DictConfig) -> dict:
    """The run-time evaluation choices of a run config, as ``eval.runner.run_evaluation`` takes them: one generator
    per clip seeded from ``seed``, ``sampling.precision`` (auto: the model's official one on CUDA) and
    ``preprocess`` (auto | official | none)."""
    return dict(seed=int(cfg.seed), precision=str(OmegaConf.select(cfg, "sampling.precision", default="auto")),
                preprocess=str(OmegaConf.select(cfg, "preprocess", default="none")))


def evaluate_run(cfg: DictConfig, model, datamodule, run_dir: Path, loggers: list, ckpt: str | None,
                 step: int = 0) -> dict:
    """Evaluate `model` under `cfg.eval_protocol`, then under each `cfg.extra_eval` protocol (into
    `run_dir/eval/<name>/`); writes `run_dir/metrics.json` (atomic) with the extra protocols' metrics merged in as
    `<name>/<metric>`, and per-video results per protocol. The loggers get everything at `trainer/global_step=step`
    (the training step of the evaluated weights), diagnostics included, and W&B's summary every metric."""
    from eval.dashboard import log_final_metrics
    from eval.probes import probe_source, run_probes
    from eval.runner import merge_extra_protocols, merge_model_diagnostics, run_evaluation

    model.eval()
    overrides = runtime.task_overrides()
    run_kw = sampling_kwargs(cfg)
    result = run_evaluation(model, datamodule, cfg.eval_protocol, run_dir, loggers=loggers, ckpt=ckpt,
                            overrides=overrides, log_step=step, **run_kw)
    extra = {}
    for name, proto in (cfg.get("extra_eval") or {}).items():
        log.info("extra evaluation protocol %s", name)
        extra[str(name)] = run_evaluation(model, datamodule, proto, run_dir / "eval" / str(name), loggers=loggers,
                                          ckpt=ckpt, overrides=overrides, log_step=step, **run_kw)
    if _global_rank() != 0:   # under DDP the runner gathered every video on rank 0, which writes the merged files
        return result
    if extra:
        result = merge_extra_protocols(run_dir, extra)
    values = run_probes(model, datamodule, cfg.eval_protocol)   # a model's probes (eval.probes), e.g. MRFA motion errors
    if values:
        result = merge_model_diagnostics(run_dir, values, probe_source(model))
    log_final_metrics(loggers, result, step)
    return result


def _checkpoint_step(path: Path) -> int | None:
    """``global_step`` of a checkpoint file (memory-mapped: no tensor is read), None when there is none."""
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))


def _global_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def objective_value(cfg: DictConfig, results: dict) -> float | None:
    """The number a sweeper optimises: ``cfg.objective`` (default: the main protocol's first metric) from the run's
    metrics; None without an evaluation. Fails naming the key when the metric is not among the run's metrics."""
    metrics = results.get("metrics")
    if metrics is None:
        return None
    name = cfg.get("objective") or str(cfg.eval_protocol.metrics[0])
    if name not in metrics:
        raise KeyError(f"objective={name!r} is not a metric of this run ({', '.join(sorted(metrics))})")
    return float(metrics[name])


def train(cfg: DictConfig) -> dict:
    runtime.validate(cfg)
    runtime.check_data_root(cfg)   # before a run directory exists
    run_dir = runtime.resolve_run_dir(cfg)
    with runtime.run_dir_lock(run_dir, "train"):   # one writer: a second process fails at once, naming this one
        preemption = Preemption(run_dir).install()
        try:
            return _train_locked(cfg, run_dir, preemption)
        finally:
            preemption.uninstall()


def _auto_resume(cfg: DictConfig, run_dir: Path) -> None:
    """A requeued job (``experiments.preemption.requeued``: preempted / timed out, restarted by submitit or SLURM into the same
    run directory) continues its ``last.ckpt``: ``resume`` is switched on."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.resume or not requeued(run_dir) or not last.exists():
        return
    log.info("requeued after preemption: resuming from %s", last)
    with_flag = OmegaConf.is_readonly(cfg)
    OmegaConf.set_readonly(cfg, False)
    cfg.resume = True
    OmegaConf.set_readonly(cfg, with_flag)


def _train_locked(cfg: DictConfig, run_dir: Path, preemption: "Preemption") -> dict:
    _auto_resume(cfg, run_dir)
    finished = runtime.finished_run(cfg, run_dir)
    if finished is not None:   # resume=true on a finished job (a relaunched sweep): nothing to redo
        print(f"run directory: {run_dir} (finished before: not redone)")
        return finished
    runtime.save_config(cfg, run_dir)
    runtime.seed_everything(cfg.seed)

    from eval.faces import attach_identity_encoder
    from lit_models.registry import build_model

    model = attach_identity_encoder(build_model(cfg.model))   # φ for InterAnimate's ID preserver (else a no-op)
    datamodule = build_datamodule(cfg.data)
    if cfg.evaluate_after_train:   # weights, decodable evaluation set, protocols: fail now, not after training
        import os

        from eval.preflight import preflight, protocols_of

        # the decode check sets the data up (SynthFaces renders it): local rank 0 only, as Lightning's prepare_data
        preflight(protocols_of(cfg), datamodule, decode=int(os.environ.get("LOCAL_RANK", 0)) == 0)
    loggers = runtime.build_loggers(cfg, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = None
    if cfg.resume and last.exists():
        ckpt_path = str(last)
        log.info("resuming from %s", last)
    elif cfg.resume and runtime.in_multirun():   # a relaunched sweep: this job had not written a checkpoint yet
        log.info("resume=true: %s has no checkpoint yet; this job starts from the beginning", run_dir)
    elif cfg.resume:
        raise FileNotFoundError(f"resume=true but {last} does not exist (pass run_dir= of the run to continue)")

    step = 0
    if model.trainable:
        trainer = runtime.build_trainer(cfg, run_dir, loggers, preemption=preemption)
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except (Preempted, SIGTERMException):   # last.ckpt holds the step boundary the signal reached
            runtime.finish_loggers(loggers)
            preemption.forward()   # submitit / SLURM requeue (the restart resumes), else exit 128 + signal
        if preemption.signum is not None:   # the signal came with the last step: the final state is the checkpoint
            if not last.exists():
                trainer.save_checkpoint(str(last))
            preemption.record(step=int(trainer.global_step))
            runtime.finish_loggers(loggers)
            preemption.forward()
        if _checkpoint_step(last) != int(trainer.global_step):
            # max_steps not on a checkpoint interval: last.ckpt holds the last interval's step (ModelCheckpoint saves
            # `last` once per step it checkpoints) — the final state is what is evaluated, so it is what last.ckpt holds
            trainer.save_checkpoint(str(last))
        step = int(trainer.global_step)
        from eval.dashboard import log_checkpoints, wandb_settings

        if (wandb_settings(cfg.logger) or {}).get("log_model"):   # checkpoints as W&B model artifacts
            log_checkpoints(loggers, last.parent)
        if str(cfg.trainer.strategy) == "fsdp" and cfg.evaluate_after_train:
            # FSDP left the parameters sharded over the ranks: evaluate a copy with the full (consolidated) weights
            from lit_models.registry import load_model

            model = attach_identity_encoder(load_model(str(last))).to(trainer.strategy.root_device)
        elif cfg.evaluate_after_train:
            # Lightning's teardown moved the model to the CPU: evaluate on the training accelerator
            model = model.to(trainer.strategy.root_device)
    else:
        log.info("%s has no trainable parameters: nothing to train", cfg.model.name)
        save_untrained_checkpoint(model, last)

    results: dict = {"run_dir": str(run_dir), "ckpt": str(last)}
    if cfg.evaluate_after_train:
        results.update(evaluate_run(cfg, model, datamodule, run_dir, loggers, str(last), step=step))
    results["objective"] = objective_value(cfg, results)
    wandb_dir = runtime.wandb_run_dir(loggers)
    runtime.finish_loggers(loggers)
    if _global_rank() != 0:
        return results
    runtime.mark_finished(cfg, run_dir, results)
    print(f"run directory: {run_dir}")
    if (run_dir / "metrics.json").exists():
        print(f"metrics:       {run_dir / 'metrics.json'}")
    if wandb_dir:
        print(f"W&B run:       {wandb_dir}  (offline: `wandb sync {wandb_dir}` to upload)")
    return results


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Returns the run's objective metric (``objective``), which Hydra's Optuna sweeper optimises."""
    runtime.setup_logging()
    with runtime.short_errors():
        return train(cfg).get("objective")


if __name__ == "__main__":
    main()
