"""`python -m experiments.compare ckpts=[A.ckpt,B.ckpt,...] eval_protocol=NAME [data=...] [out=DIR]`.

Paired checkpoint comparison (the library function is ``eval.compare.compare``): every checkpoint is evaluated under
the same protocol and each later one is compared with the first (the baseline) video by video — mean difference,
paired bootstrap 95% CI, share of videos better, verdict. A checkpoint whose evaluation under this protocol and
test set already exists (its run directory's, or a previous comparison's in ``out``: same model identity, protocol
hash and data fingerprint, ``eval.reuse``) is not evaluated again; the models are loaded one at a time. A Hydra CLI like train / evaluate: the config
``experiments/configs/compare.yaml`` is the evaluate config (``ckpts`` is a key of the run schema), so every evaluate
override works (``eval_protocol.max_videos=8``, ``data.root=…``, ``logger=none``, …). Writes into ``out=`` or else
this run's directory (``runs/compare/<timestamp>``): ``report.md`` / ``report.html``, ``summary.csv``,
``paired_differences.csv``, ``paired_<metric>.png``, ``compare_grid.mp4``, one sub-folder of evaluation results per
checkpoint; one W&B run of job type ``compare`` when the logger group has a W&B entry (``logger=wandb``, the default; its
``project`` / ``entity`` / ``mode``), none with ``logger=none`` / ``logger=csv`` / ``logger.wandb=null``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments import runtime
from experiments.schema import register_configs
from experiments.train import build_datamodule, sampling_kwargs

log = logging.getLogger("portraitlab.compare")
register_configs()


def compare_checkpoints(cfg: DictConfig) -> dict:
    """Run ``eval.compare.compare`` for ``cfg.ckpts`` under ``cfg.eval_protocol`` on ``cfg.data``."""
    from eval.compare import compare

    from experiments.evaluate import cli_device

    device = cli_device(cfg)                                # device=cuda without CUDA: fail before any work
    ckpts = [str(c) for c in (cfg.ckpts or [])]
    if len(ckpts) < 2:
        raise runtime.ConfigError(f"ckpts: give at least two checkpoints, got {ckpts} "
                                  "(e.g. ckpts=[runs/a/checkpoints/last.ckpt,runs/b/checkpoints/last.ckpt])")
    missing = [c for c in ckpts if not Path(c).is_file()]
    if missing:
        raise FileNotFoundError(f"ckpts: no such checkpoint file {', '.join(missing)}")
    out = Path(cfg.out) if cfg.out else runtime.resolve_run_dir(cfg)
    # as experiments.evaluate: frames are read at native size and resized with the protocol's method; every model
    # runs at its own resolution (eval.runner.animate_at_model_resolution)
    datamodule = build_datamodule(cfg.data)
    from eval.faces import attach_identity_encoder
    from lit_models.registry import load_model

    def load(label: str, path: str):   # one model at a time; models that need it get their identity encoder
        # ckpt_weights: EMA or raw; each model moved to the device once (auto: CUDA when present)
        return attach_identity_encoder(load_model(path, weights=cfg.ckpt_weights)).to(device)

    from eval.dashboard import wandb_settings

    ws = wandb_settings(cfg.logger)
    return compare(ckpts, cfg.eval_protocol, datamodule, out, load=load, run_kw=sampling_kwargs(cfg),
                   use_wandb=ws is not None,
                   wandb_mode=ws["mode"] if ws else "disabled", num_grid_videos=int(cfg.eval_protocol.num_grid_videos),
                   project=ws["project"] if ws else "portraitlab", entity=ws["entity"] if ws else None)


@hydra.main(config_path="configs", config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    runtime.setup_logging()
    OmegaConf.set_struct(cfg, False)
    with runtime.short_errors():
        res = compare_checkpoints(cfg)
    print(Path(res["report"]).read_text())
    print(f"report: {res['report']}  (page: {Path(res['report']).with_suffix('.html')})")


if __name__ == "__main__":
    main()
