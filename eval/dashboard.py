"""W&B dashboards: one story per sweep, evaluations at the training run's final step, linked evaluation runs.

The local files are the source of truth; W&B mirrors them (offline unless W&B is turned on). Conventions:

* **group** — a sweep's jobs, its ablation-table run and later evaluations of its checkpoints share one group,
  ``<sweep name>-<sweep timestamp>`` (``sweep_group``), so re-running a sweep never mixes with an earlier one;
  a single run's group is its experiment name (``logger.wandb.group`` overrides both);
* **job_type** — ``train`` (a training run, with its end-of-training evaluation), ``eval`` (a later
  ``experiments.evaluate ckpt=…``), ``table`` (the sweep's ablation table), ``compare`` (``eval.compare``);
* **tags** — ``<axis>=<value>`` for every ablation axis, ``seed=<n>``, the sweep name, plus ``logger.wandb.tags``;
* every run directory with a W&B run holds ``wandb_run.json`` (id, project, entity, group, name, tags, job_type):
  ``experiments.evaluate ckpt=RUN/checkpoints/X.ckpt`` reads it and starts a *linked* run — same project, entity and
  group, config ``train_run_id`` / ``train_run_name``, its metrics logged at the checkpoint's ``trainer/global_step``
  — so the group's dashboard shows training and every later evaluation of it on one step axis. (A linked run rather
  than resuming the training run's id: resuming does not work offline and two evaluations could not run at once.)
* evaluation metrics are logged as ``eval/<protocol>/<metric>`` at the final training step, model diagnostics
  included, and ``wandb.run.summary`` holds every ``metrics.json`` metric under its own name.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("portraitlab.dashboard")

RUN_INFO = "wandb_run.json"


def sweep_group(sweep_dir: str | Path, sweep_name: Optional[str] = None) -> str:
    """The W&B group of one sweep invocation: ``<sweep name>-<timestamp folder>`` (unique per invocation)."""
    p = Path(str(sweep_dir))
    return f"{sweep_name or p.parent.name}-{p.name}"


def axis_tags(values: dict[str, Any], seed: Any = None, extra: Optional[list[str]] = None) -> list[str]:
    """``<axis>=<value>`` for every axis, ``seed=<n>``, then ``extra`` (W&B limits a tag to 64 characters)."""
    tags = [f"{k}={v}"[:64] for k, v in values.items()]
    if seed is not None:
        tags.append(f"seed={seed}")
    for t in extra or []:
        if str(t) not in tags:
            tags.append(str(t)[:64])
    return tags


def write_run_info(run_dir: str | Path, info: dict) -> Path:
    from toolbox.io import atomic_write_text

    return atomic_write_text(Path(run_dir) / RUN_INFO, json.dumps(info, indent=2, sort_keys=True))


def read_run_info(run_dir: str | Path) -> Optional[dict]:
    p = Path(run_dir) / RUN_INFO
    return json.loads(p.read_text()) if p.is_file() else None


def run_dir_of_checkpoint(ckpt: str | Path) -> Path:
    """``RUN/checkpoints/X.ckpt`` → ``RUN``."""
    p = Path(ckpt).absolute()
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def wandb_mode(mode: Optional[str] = None) -> str:
    mode = str(mode or os.environ.get("WANDB_MODE", "offline"))
    return "offline" if mode == "dryrun" else mode


def wandb_entry(logger_cfg) -> Optional[tuple[str, Any]]:
    """The W&B entry of a run config's ``logger`` group (``name: {_target_: <Lightning Logger>, ...}`` entries):
    ``(name, node)`` of the first non-null entry whose ``_target_`` is Lightning's ``WandbLogger`` (or a subclass),
    else None."""
    for name, node in (logger_cfg or {}).items():
        if node is not None and hasattr(node, "get") and _is_wandb_target(node.get("_target_")):
            return str(name), node
    return None


def is_wandb_logger(obj: Any) -> bool:
    """Whether a logger entry's (located) ``_target_`` is Lightning's W&B logger or a subclass of it."""
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(obj, type) and issubclass(obj, WandbLogger)


def _is_wandb_target(target: Any) -> bool:
    if not target:
        return False
    try:
        from hydra._internal.utils import _locate   # hydra.utils.instantiate's importer

        obj = _locate(str(target))
    except Exception:   # not importable: not a W&B logger (the run's validation names the bad entry)
        return False
    return is_wandb_logger(obj)


def wandb_settings(logger_cfg) -> Optional[dict]:
    """What the repo's own W&B runs (table, compare, personalize) and the W&B logger take from the ``logger`` group's
    W&B entry: ``entry`` (its name), ``project``, ``entity``, ``mode`` (``wandb_mode``: dryrun → offline, unset → the
    ``WANDB_MODE`` environment variable or offline), ``group``, ``tags``, ``log_model``; None without a W&B entry."""
    found = wandb_entry(logger_cfg)
    if found is None:
        return None
    name, node = found
    return {"entry": name, "project": node.get("project") or "portraitlab", "entity": node.get("entity"),
            "mode": wandb_mode(node.get("mode")), "group": node.get("group") or None,
            "tags": [str(t) for t in node.get("tags") or []], "log_model": bool(node.get("log_model") or False)}


def init_run(*, project: str, entity: Optional[str], group: Optional[str], job_type: str, name: str, dir: str | Path,
             config: Optional[dict] = None, tags: Optional[list[str]] = None, mode: Optional[str] = None):
    """``wandb.init`` with the repo's conventions (a fresh run; the previous one in this process is finished)."""
    import wandb

    Path(dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=project, entity=entity, group=group, job_type=job_type, name=name, dir=str(dir),
                      config=config or {}, tags=list(tags or []), mode=wandb_mode(mode), reinit="finish_previous")


def _finite(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _wandb_loggers(loggers) -> list:
    return [lg for lg in loggers or [] if type(lg).__name__ == "WandbLogger"]


def log_eval_results(loggers, protocol_name: str, metrics: dict, per_video_csv: Optional[Path] = None,
                     grid: Optional[Path] = None, step: int = 0) -> None:
    """One protocol's evaluation into every logger at ``step`` (the training run's final step): scalars as
    ``eval/<protocol>/<metric>``; for W&B also the per-video ``wandb.Table`` and the grid video, at the same step."""
    scalars = {f"eval/{protocol_name}/{k}": v for k, v in _finite(metrics).items()}
    for logger in loggers or []:
        try:
            logger.log_metrics(scalars, step=int(step))
            if type(logger).__name__ == "WandbLogger":
                import wandb

                payload: dict[str, Any] = {"trainer/global_step": int(step)}
                if per_video_csv is not None and Path(per_video_csv).is_file():
                    import pandas as pd

                    payload[f"eval/{protocol_name}/per_video"] = wandb.Table(dataframe=pd.read_csv(per_video_csv))
                if grid is not None and Path(grid).is_file():   # from the mp4 PyAV wrote
                    payload[f"eval/{protocol_name}/grid"] = wandb.Video(str(grid), format="mp4")
                logger.experiment.log(payload)
        except Exception as err:  # a logger failure must not lose the local results (the source of truth)
            log.warning("logging eval results to %s failed: %s", type(logger).__name__, err)


def log_final_metrics(loggers, result: dict, step: int = 0) -> None:
    """After every protocol and the model's diagnostics are merged into ``metrics.json`` (``result``): log the
    diagnostics and model statistics as ``eval/<protocol>/<name>`` at ``step``, and put every metric into
    ``wandb.run.summary`` under its ``metrics.json`` name (plus ``protocol``, ``protocol_hash``, ``eval_step``)."""
    metrics = _finite(result.get("metrics") or {})
    protocol = str(result.get("protocol"))
    own = list((result.get("model_diagnostics") or {}).get("names") or []) + list(result.get("model_stats") or [])
    extra = {f"eval/{protocol}/{k}": metrics[k] for k in own if k in metrics}
    for logger in loggers or []:
        try:
            if extra:
                logger.log_metrics(extra, step=int(step))
        except Exception as err:
            log.warning("logging diagnostics to %s failed: %s", type(logger).__name__, err)
    for logger in _wandb_loggers(loggers):
        try:
            summary = logger.experiment.summary
            summary.update(metrics)
            summary.update({"protocol": protocol, "protocol_hash": str(result.get("protocol_hash")),
                            "eval_step": int(step)})
        except Exception as err:
            log.warning("W&B summary not written: %s", err)


def log_checkpoints(loggers, ckpt_dir: str | Path) -> list[str]:
    """Every checkpoint in ``ckpt_dir`` as a version of the W&B model artifact ``model-<run id>`` (``logger.wandb.
    log_model=true``; aliases ``latest`` for ``last.ckpt`` and the file's stem). Done here rather than by Lightning's
    ``WandbLogger(log_model=...)``, which refuses offline mode; offline, the artifacts are uploaded by ``wandb sync``."""
    import wandb

    logged = []
    for logger in _wandb_loggers(loggers):
        run = logger.experiment
        for ckpt in sorted(Path(ckpt_dir).glob("*.ckpt")):
            art = wandb.Artifact(name=f"model-{run.id}", type="model", metadata={"file": ckpt.name})
            art.add_file(str(ckpt))
            run.log_artifact(art, aliases=[ckpt.stem] + (["latest"] if ckpt.name == "last.ckpt" else []))
            logged.append(str(ckpt))
    return logged


def compare_group(labels: dict[str, str], out: Path) -> str:
    """The checkpoints' shared W&B group (their training runs' ``wandb_run.json``), else ``compare-<out name>``."""
    groups = {(read_run_info(run_dir_of_checkpoint(c)) or {}).get("group") for c in labels.values()}
    return groups.pop() if len(groups) == 1 and None not in groups else f"compare-{Path(out).name}"


def log_compare_run(out: Path, summary, per_video: dict, labels: dict[str, str], grid: Optional[Path],
                    plots: list[Path], protocol_name: str, protocol_hash: str, project: str = "portraitlab",
                    entity: Optional[str] = None, mode: Optional[str] = None) -> Optional[str]:
    """One W&B run (job type ``compare``) holding the comparison: ``compare/deltas`` (per metric and model: means,
    Δ, paired-bootstrap CI, share of videos better, verdict), ``compare/per_video`` (every model's per-video results,
    long form), the paired plots and the side-by-side video; the summary holds each Δ and its CI."""
    import pandas as pd
    import wandb

    if wandb_mode(mode) == "disabled":
        return None
    per = pd.concat([df.assign(model=label) for label, df in per_video.items()], ignore_index=True)
    per = per[["model"] + [c for c in per.columns if c != "model"]]
    run = init_run(project=project, entity=entity, group=compare_group(labels, out), job_type="compare",
                   name=f"compare-{Path(out).name}", dir=out, mode=mode,
                   config={"checkpoints": dict(labels), "baseline": next(iter(labels)), "protocol": protocol_name,
                           "protocol_hash": protocol_hash},
                   tags=[f"compare:{label}" for label in labels])
    try:
        payload: dict[str, Any] = {"compare/deltas": wandb.Table(dataframe=summary.reset_index(drop=True)),
                                   "compare/per_video": wandb.Table(dataframe=per)}
        payload.update({f"compare/{p.stem}": wandb.Image(str(p)) for p in plots})
        if grid is not None and Path(grid).is_file():
            payload["compare/side_by_side"] = wandb.Video(str(grid), format="mp4")
        run.log(payload)
        for _, r in summary.iterrows():
            key = f"delta/{r.model}/{r.metric}"
            run.summary.update({key: r.diff_mean, f"{key}/ci_low": r.ci_low, f"{key}/ci_high": r.ci_high})
        return run.dir
    finally:
        run.finish()
