"""The run directory and its lifecycle: where a run writes (``run_dir`` or Hydra's output directory), its one-writer
lock, the resolved ``config.yaml``, ``train_done.json`` (what a relaunched sweep skips), seeding and the multirun's
sweep directory."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from datamodules.utils import atomic_write_text
from lit_models.optim import flat_optim_keys
from toolbox.io import atomic_write_json
from experiments.preemption import PREEMPT_FILE
from experiments.validation import ConfigError

log = logging.getLogger("portraitlab")


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run's unique directory: `run_dir=` when given (resume), else Hydra's output directory."""
    run_dir = OmegaConf.select(cfg, "run_dir", default=None)
    if run_dir in (None, "???") or OmegaConf.is_missing(cfg, "run_dir"):
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


RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def run_dir_lock(run_dir: Path, purpose: str):
    """The run directory's one-writer lock (an OS file lock on run_dir/.lock, freed when the holder dies). Held by
    the launching process / global rank 0 only: the other ranks of one multi-GPU job (started by Lightning or
    SLURM with the same run_dir) belong to the same writer."""
    from toolbox.locks import DirLock

    if any(int(os.environ.get(var, "0") or 0) > 0 for var in RANK_VARS):
        return contextlib.nullcontext()
    return DirLock(run_dir, purpose=purpose)


def in_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


DONE_FILE = "train_done.json"


def finished_run(cfg: DictConfig, run_dir: Path) -> dict | None:
    """With resume=true: the results of a run that already finished what `cfg` asks (the same resolved config,
    `resume`/`run_dir` aside), from its `train_done.json`; None when there is work left."""
    done = run_dir / DONE_FILE
    if not cfg.get("resume") or not done.exists():
        return None
    try:
        record = json.loads(done.read_text())
    except ValueError:
        return None
    known = {_run_fingerprint(cfg), _run_fingerprint(cfg, flat_optim=True)}
    if record.get("config_sha256") not in known or not Path(record.get("ckpt") or "").exists():
        return None   # another max_steps / protocol / anything: there is work to do (resume from last.ckpt)
    log.info("%s finished before (%s): not redone", run_dir, done.name)
    return record.get("results", {})


def _run_fingerprint(cfg: DictConfig, flat_optim: bool = False) -> str:
    """sha256 of the resolved config without `resume` / `run_dir` (how a run was continued, not what it is).
    ``flat_optim``: of the same config with the model's optimizer / scheduler written as flat keys
    (``lit_models.optim.flat_optim_keys``), the layout of run directories written before those nodes."""
    container = OmegaConf.to_container(cfg, resolve=True)
    if flat_optim and isinstance(container.get("model"), dict):
        container["model"] = flat_optim_keys(container["model"])
    for key in ("resume", "run_dir"):
        container.pop(key, None)
    if not container.get("callbacks", True):   # an empty `callbacks` dict does not change the fingerprint
        container.pop("callbacks")
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True).encode()).hexdigest()


def mark_finished(cfg: DictConfig, run_dir: Path, results: dict) -> None:
    """`train_done.json`: this run finished everything its config asks (what a relaunched sweep skips)."""
    atomic_write_json(run_dir / DONE_FILE, {"config_sha256": _run_fingerprint(cfg), "max_steps": int(cfg.trainer.max_steps),
                                            "ckpt": results.get("ckpt"), "evaluated": bool(cfg.evaluate_after_train),
                                            "results": results}, strict=True)
    (run_dir / PREEMPT_FILE).unlink(missing_ok=True)   # nothing left to resume (preemptions.jsonl keeps the history)


def task_overrides() -> list[str]:
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


def sweep_dir() -> Path | None:
    """The multirun's sweep directory when this process runs a Hydra multirun job, else None."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(getattr(hc, "mode", "")).endswith("MULTIRUN"):
        return Path(hc.sweep.dir)
    return None
