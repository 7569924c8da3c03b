"""The ``logger`` group built into Lightning loggers, and the W&B run's identity (id, name, group, tags, job type,
config) that the lab gives its W&B entry."""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from datamodules.utils import atomic_write_text
from eval.dashboard import axis_tags, is_wandb_logger, read_run_info, sweep_group, wandb_mode, wandb_settings, \
    write_run_info
from experiments import rundir
from experiments.validation import ConfigError, _logger_params, _logger_target

log = logging.getLogger("portraitlab")


def wandb_identity(cfg: DictConfig, run_dir: Path, job_type: str = "train", link: dict | None = None) -> dict:
    """Project, entity, group, name, tags and job type of this run's W&B run (conventions: ``eval.dashboard``).

    A sweep job's group is ``<sweep name>-<sweep timestamp>``; ``link`` (the ``wandb_run.json`` of a checkpoint's
    training run) puts an evaluation into that run's group. Project and entity are always the W&B logger entry's
    (``logger.wandb.project`` / ``logger.wandb.entity``); its ``group`` overrides the lab's, its ``tags`` are added."""
    ws = wandb_settings(cfg.get("logger")) or {"entry": "wandb", "project": "portraitlab", "entity": None,
                                               "group": None, "tags": []}
    sdir = rundir.sweep_dir()
    group = ws["group"] or (link or {}).get("group") or \
        (sweep_group(sdir, cfg.get("sweep_name")) if sdir is not None else None) or cfg.get("sweep_name") or cfg.name
    values = {k: OmegaConf.select(cfg, k) for k in cfg.get("axes") or []}
    extra = list(ws["tags"]) + ([str(cfg.sweep_name)] if cfg.get("sweep_name") else [])
    name = f"{cfg.name}-{run_dir.name}" if job_type == "train" or not link else f"{link.get('name')}-eval-{run_dir.name}"
    if link and (link.get("project"), link.get("entity")) != (ws["project"], ws["entity"]):
        log.warning("the checkpoint's training run is in W&B project %s/%s, this evaluation logs to %s/%s "
                    "(logger.%s.project / logger.%s.entity): the dashboards will not show them together",
                    link.get("entity"), link.get("project"), ws["entity"], ws["project"], ws["entry"], ws["entry"])
    return {"project": ws["project"], "entity": ws["entity"], "group": group, "job_type": job_type, "name": name,
            "tags": (list(link.get("tags") or []) + [f"eval-of:{link.get('id')}"]) if link else
            axis_tags(values, cfg.get("seed"), extra)}


def build_loggers(cfg: DictConfig, run_dir: Path, job_type: str = "train", link: dict | None = None,
                  extra_config: dict | None = None) -> list:
    """The ``logger`` group's entries (``name: {_target_: <Lightning Logger>, ...}``, config group ``logger/``), each
    built with ``hydra.utils.instantiate`` in the dict's order; ``name: null`` switches an entry off. The lab adds
    only the run-time values it owns: ``save_dir`` = the run directory (when the class takes one and the entry leaves
    it unset) and, for the W&B entry, the run id (``wandb_id.txt``, kept on resume), name, group, tags and job type
    (``wandb_identity``; a resumed run keeps its group), the resolved config (plus the linked training run of an
    evaluation) and offline/online from its ``mode`` (``disabled`` skips it). ``job_type`` train / eval; ``link``:
    the training run an evaluation belongs to."""
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import Logger

    loggers: list = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        target = _logger_target(name, node)
        params, _ = _logger_params(target)
        lab: dict[str, Any] = {}
        if "save_dir" in params and node.get("save_dir") is None:
            lab["save_dir"] = str(run_dir)
        info = None
        if is_wandb_logger(target):
            mode = wandb_mode(node.get("mode"))
            if mode == "disabled":
                continue
            lab.update(_wandb_run_kwargs(cfg, run_dir, job_type, link, extra_config))
            info = {"id": lab["id"], "run_dir": str(run_dir), **lab.pop("_identity")}
            lab.update(offline=mode == "offline", mode=mode, resume="allow",
                       log_model=False)   # checkpoints: eval.dashboard.log_checkpoints (logger.<name>.log_model)
        try:   # the entry's own keys through Hydra (nested _target_ nodes included), the lab's values as given
            logger = instantiate(node, _partial_=True, _convert_="all")(**lab)
        except Exception as e:   # hydra wraps import/constructor errors: say which entry
            raise ConfigError(f"logger.{name}: cannot build {node._target_} ({type(e).__name__}: {e})") from e
        if not isinstance(logger, Logger):
            raise ConfigError(f"logger.{name}: {node._target_} did not return a Lightning logger")
        loggers.append(logger)
        if info is not None:
            write_run_info(run_dir, info)
    return loggers


def _wandb_run_kwargs(cfg: DictConfig, run_dir: Path, job_type: str, link: dict | None,
                      extra_config: dict | None) -> dict:
    """The W&B run's id (``wandb_id.txt``), name, group, tags, job type and config (``_identity``: what
    ``wandb_run.json`` records)."""
    id_file = run_dir / "wandb_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:8]
        atomic_write_text(id_file, run_id)
    ident = wandb_identity(cfg, run_dir, job_type, link)
    previous = read_run_info(run_dir)
    if previous and previous.get("id") == run_id:     # resume: the run keeps its group (its sweep's story)
        ident["group"] = previous.get("group", ident["group"])
    config = OmegaConf.to_container(cfg, resolve=True)
    if link:
        config.update({"train_run_id": link.get("id"), "train_run_name": link.get("name"),
                       "train_run_dir": link.get("run_dir")})
    config.update(extra_config or {})
    os.environ.setdefault("WANDB_SILENT", "true")
    return {"id": run_id, "config": config, "_identity": ident,
            **{k: ident[k] for k in ("project", "entity", "name", "group", "tags", "job_type")}}


def is_wandb(logger: Any) -> bool:
    """Whether a built logger is Lightning's W&B logger (or a subclass): ``eval.dashboard.is_wandb_logger``, the
    predicate the ``logger`` entries are checked with."""
    return is_wandb_logger(type(logger))


def wandb_run_dir(loggers: list) -> str | None:
    """The W&B run's local directory (``.../wandb/<run>``) of the W&B logger among ``loggers``, else None."""
    for logger in loggers:
        if is_wandb(logger):
            return str(Path(logger.experiment.dir).parent)
    return None


def finish_loggers(loggers: list) -> None:
    """Close W&B runs (each multirun job is its own run) and flush file loggers."""
    for logger in loggers:
        if is_wandb(logger):
            import wandb

            logger.finalize("success")
            if logger._experiment is not None:
                logger.experiment.finish()
            wandb.finish()
        else:
            logger.finalize("success")
