"""`python -m experiments.train experiment=NAME [key=value ...]` — train, then evaluate under the run's protocol.

Every run gets a unique directory (Hydra's output dir, or `run_dir=` to resume) holding `config.yaml` (resolved),
`checkpoints/` (with `last.ckpt`), `csv/` and `wandb/` logs, grids, and the evaluation's `metrics.json`.
`resume=true run_dir=PATH` continues `PATH/checkpoints/last.ckpt` exactly (weights, optimizer, RNG, data stream).
A sweep (`sweep=NAME`) is a Hydra multirun declared in one file; its end callback writes the ablation table.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from experiments import runtime
from experiments.schema import register_configs

log = logging.getLogger("portraitlab.train")
register_configs()


def build_datamodule(data_cfg: DictConfig):
    from datamodules import VideoClipDataModule

    return VideoClipDataModule(data_cfg)


def save_untrained_checkpoint(model, path: Path) -> Path:
    """A parameter-free baseline still gets a checkpoint, so `evaluate ckpt=` and `compare` treat it like any run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(), "global_step": 0}, tmp)
    tmp.replace(path)
    return path


def evaluate_run(cfg: DictConfig, model, datamodule, run_dir: Path, loggers: list, ckpt: str | None) -> dict:
    """Evaluate `model` under `cfg.eval_protocol`, then under each `cfg.extra_eval` protocol (into
    `run_dir/eval/<name>/`); writes `run_dir/metrics.json` (atomic) with the extra protocols' metrics merged in as
    `<name>/<metric>`, and per-video results per protocol."""
    from eval.runner import merge_extra_protocols, merge_model_diagnostics, run_evaluation

    model.eval()
    overrides = runtime.task_overrides()
    result = run_evaluation(model, datamodule, cfg.eval_protocol, run_dir, loggers=loggers, ckpt=ckpt,
                            overrides=overrides)
    extra = {}
    for name, proto in (cfg.get("extra_eval") or {}).items():
        log.info("extra evaluation protocol %s", name)
        extra[str(name)] = run_evaluation(model, datamodule, proto, run_dir / "eval" / str(name), loggers=loggers,
                                          ckpt=ckpt, overrides=overrides)
    if _global_rank() != 0:   # under DDP the runner gathered every video on rank 0, which writes the merged files
        return result
    if extra:
        result = merge_extra_protocols(run_dir, extra)
    diagnostics = getattr(model, "eval_diagnostics", None)
    if callable(diagnostics):   # a method's own analysis on the main protocol's test set (e.g. MRFA motion errors)
        with torch.no_grad():
            values = diagnostics(datamodule, cfg.eval_protocol)
        if values:
            result = merge_model_diagnostics(run_dir, values, f"{type(model).__name__}.eval_diagnostics")
    return result


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
    run_dir = runtime.resolve_run_dir(cfg)
    runtime.save_config(cfg, run_dir)
    runtime.seed_everything(cfg.seed)

    from lit_models.registry import build_model

    model = build_model(cfg.model)
    datamodule = build_datamodule(cfg.data)
    loggers = runtime.build_loggers(cfg, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = None
    if cfg.resume:
        if not last.exists():
            raise FileNotFoundError(f"resume=true but {last} does not exist (pass run_dir= of the run to continue)")
        ckpt_path = str(last)
        log.info("resuming from %s", last)

    if model.trainable:
        trainer = runtime.build_trainer(cfg, run_dir, loggers)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if not last.exists():  # max_steps not reached a checkpoint interval: keep the final state anyway
            trainer.save_checkpoint(str(last))
        if str(cfg.trainer.strategy) == "fsdp" and cfg.evaluate_after_train:
            # FSDP left the parameters sharded over the ranks: evaluate a copy with the full (consolidated) weights
            from lit_models.registry import load_model

            model = load_model(str(last)).to(trainer.strategy.root_device)
    else:
        log.info("%s has no trainable parameters: nothing to train", cfg.model.name)
        save_untrained_checkpoint(model, last)

    results: dict = {"run_dir": str(run_dir), "ckpt": str(last)}
    if cfg.evaluate_after_train:
        results.update(evaluate_run(cfg, model, datamodule, run_dir, loggers, str(last)))
    results["objective"] = objective_value(cfg, results)
    wandb_dir = runtime.wandb_run_dir(loggers)
    runtime.finish_loggers(loggers)
    if _global_rank() != 0:
        return results
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
    return train(cfg)["objective"]


if __name__ == "__main__":
    main()
