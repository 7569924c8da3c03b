"""`python -m experiments.evaluate ckpt=PATH eval_protocol=NAME` (or `model=copy_source` for an untrained baseline).

Streams the protocol's test set through the model's `animate`, writes per-frame / per-video results and an
aggregate `metrics.json` into a new run directory, mirrors them to W&B, and resumes an interrupted evaluation
(`run_dir=PATH`) without recomputing finished videos. On W&B the evaluation is a run of job type `eval` linked to
the checkpoint's training run (same group, `train_run_id` in its config, metrics at the checkpoint's
`trainer/global_step`; see `eval.dashboard`). `device=auto|cpu|cuda|cuda:N` (auto: CUDA when present) and
`sampling.precision=auto|fp16|bf16|fp32` are recorded in metrics.json.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments import runtime
from experiments.schema import register_configs
from experiments.train import build_datamodule, evaluate_run

log = logging.getLogger("portraitlab.evaluate")
register_configs()


def cli_device(cfg: DictConfig):
    """``device=`` resolved (``lit_models.base.resolve_device``); an unavailable device is a config error."""
    from lit_models.base import resolve_device

    try:
        return resolve_device(cfg.get("device", "auto"))
    except (RuntimeError, ValueError) as err:
        raise runtime.ConfigError(str(err)) from None


def load_for_eval(cfg: DictConfig):
    from eval.faces import attach_identity_encoder
    from lit_models.registry import build_model, load_model

    if cfg.ckpt:
        # φ for InterAnimate's ID preserver (else a no-op); ckpt_weights: the EMA or the raw weights
        model = attach_identity_encoder(load_model(cfg.ckpt, weights=cfg.ckpt_weights))
        OmegaConf.set_struct(cfg, False)
        cfg.model = OmegaConf.create(dict(model.hparams["model"]))
        OmegaConf.set_struct(cfg, True)
        return model
    model = attach_identity_encoder(build_model(cfg.model))
    if model.trainable:
        raise runtime.ConfigError(f"model={cfg.model.name} has trainable parameters: pass ckpt=PATH to evaluate it")
    return model


def _checkpoint_step(ckpt: str) -> int:
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    except Exception:  # a checkpoint without the key (e.g. saved by hand)
        return 0


def evaluate(cfg: DictConfig) -> dict:
    from lit_models.base import model_dtype

    device = cli_device(cfg)       # device=cuda without CUDA fails here, before loading
    model = load_for_eval(cfg).to(device)                      # moved once; metrics.json records device and dtype
    log.info("evaluate: device=%s dtype=%s", device, model_dtype(model))
    # any checkpoint under any protocol: the evaluation reads frames at native size and applies the protocol's
    # crop / resize; the model runs at its own resolution (eval.runner.animate_at_model_resolution). data.resolution
    # (the training-time resize) plays no part in the scores: it follows the model so the config stays consistent.
    OmegaConf.set_struct(cfg, False)
    cfg.data.resolution = OmegaConf.select(cfg, "model.resolution", default=cfg.data.resolution)
    OmegaConf.set_struct(cfg, True)
    runtime.validate(cfg)
    run_dir = runtime.resolve_run_dir(cfg)
    from toolbox.locks import DirLock

    # one writer: a second evaluation into this run_dir fails here, naming the holder, before touching any file
    with DirLock(run_dir, purpose="evaluation"):
        runtime.save_config(cfg, run_dir)
        runtime.seed_everything(cfg.seed)
        datamodule = build_datamodule(cfg.data)
        # W&B: a run linked to the checkpoint's training run (its group; `train_run_id` in the config), logged at
        # the checkpoint's training step, so that run's dashboard shows training and every later evaluation
        link, step = None, 0
        if cfg.ckpt:
            from eval.dashboard import read_run_info, run_dir_of_checkpoint

            link = read_run_info(run_dir_of_checkpoint(cfg.ckpt))
            step = _checkpoint_step(cfg.ckpt)
        loggers = runtime.build_loggers(cfg, run_dir, job_type="eval", link=link,
                                        extra_config={"ckpt": str(cfg.ckpt), "ckpt_step": step})
        results = evaluate_run(cfg, model, datamodule, run_dir, loggers, cfg.ckpt, step=step)
        wandb_dir = runtime.wandb_run_dir(loggers)
        runtime.finish_loggers(loggers)
    print(f"metrics: {run_dir / 'metrics.json'}")
    if wandb_dir:
        print(f"W&B run: {wandb_dir}")
    return results


@hydra.main(config_path="configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    runtime.setup_logging()
    with runtime.short_errors():        # device=cuda without CUDA, missing weights: one line, no traceback
        evaluate(cfg)


if __name__ == "__main__":
    main()
