"""What every entry point shares: run directories, validation, seeding, loggers, callbacks, the Trainer."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.utils import atomic_write_text
from experiments.preemption import PREEMPT_FILE, Preemption, PreemptionCheckpoint

log = logging.getLogger("portraitlab")

CHOICES = {
    "data.layout": ("auto", "fomm", "nested", "frames", "shards"),
    "data.crop": ("none", "center", "meta"),
    "data.decoder": ("pyav", "decord"),
    "trainer.precision": ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"),
    "eval_protocol.mode": ("self", "cross", "synth_cross"),
    "ckpt_weights": ("auto", "ema", "raw"),          # lit_models.registry.CKPT_WEIGHTS
}
WANDB_MODES = ("offline", "online", "disabled", "dryrun")   # a W&B logger entry's `mode` (dryrun: W&B's old offline)


class ConfigError(ValueError):
    """A config value is out of range; the message names the offending key."""


def validate(cfg: DictConfig) -> None:
    """Semantic checks beyond the structured schema (which already rejects unknown keys and wrong types)."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a config key{_close_key(unknown[0], cfg)}: `+key=` adds keys that no "
                          f"schema declares and nothing reads" + (f" (also: {', '.join(unknown[1:4])})" if unknown[1:] else ""))
    for key in (cfg.get("trainer") or {}):
        if key in _TRAINER_RESERVED:
            raise ConfigError(f"trainer.{key} is set by the lab; use {_TRAINER_RESERVED[key]}")
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and (not isinstance(node, DictConfig) or "_target_" not in node):
            raise ConfigError(f"callbacks.{name} needs a _target_ (a lightning Callback class path) or null")
    check_loggers(cfg)
    check_resolution(cfg)
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and str(value) not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    ema = OmegaConf.select(cfg, "model.ema_decay", default=None)
    if ema is not None and not 0.0 <= float(ema) < 1.0:
        raise ConfigError(f"model.ema_decay={ema} must be in [0, 1) (0 turns EMA off)")
    for key in ("trainer.keep_last_n",):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and int(value) < 1:
            raise ConfigError(f"{key}={value} must be >= 1")
    for key in ("data.batch_size", "data.resolution", "trainer.accumulate_grad_batches"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and int(value) < 1:
            raise ConfigError(f"{key}={value} must be >= 1")
    for key in [k for k in (cfg.get("model") or {}) if str(k).startswith("lambda_")]:
        if float(cfg.model[key]) < 0:
            raise ConfigError(f"model.{key}={cfg.model[key]} must be >= 0 (0 skips the term)")
    model_res = OmegaConf.select(cfg, "model.resolution", default=None)
    data_res = OmegaConf.select(cfg, "data.resolution", default=None)
    if model_res is not None and data_res is not None and int(model_res) != int(data_res):
        raise ConfigError(f"model.resolution={model_res} differs from data.resolution={data_res}")
    if OmegaConf.select(cfg, "model.driving_appearance", default=None) == "cross_identity" and \
            not OmegaConf.select(cfg, "data.use_synth_cross_driving", default=False):
        raise ConfigError("model.driving_appearance=cross_identity needs data.use_synth_cross_driving=true (SynthFaces "
                          "renders the driving motion with another identity; see experiment=xportrait_cross_identity)")
    for name, proto in (cfg.get("extra_eval") or {}).items():
        if str(proto.mode) not in CHOICES["eval_protocol.mode"]:
            raise ConfigError(f"extra_eval.{name}.mode={proto.mode!r} is not one of {', '.join(CHOICES['eval_protocol.mode'])}")
        if "/" in str(name) or str(name) == str(cfg.eval_protocol.name):
            raise ConfigError(f"extra_eval.{name}: the name must differ from the main protocol's and contain no '/'")
    for key in cfg.get("axes") or []:
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"axes names {key!r}, which is not a config key")


def _unknown_keys(node: Any, path: str = "") -> list[str]:
    """Keys of structured (dataclass-typed) nodes that their dataclass does not declare. Hydra's `+key=value`
    force-adds a key even to a structured node, where nothing would ever read it (`+trainer.max_step=10`)."""
    import dataclasses

    if not isinstance(node, DictConfig):
        return []
    found: list[str] = []
    typ = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(typ)} if dataclasses.is_dataclass(typ) else None
    if fields is not None and path == "trainer":
        fields = fields | set(trainer_kwargs())
    for key in node.keys():
        name = f"{path}.{key}" if path else str(key)
        if fields is not None and key not in fields:
            found.append(name)
            continue
        if OmegaConf.is_missing(node, key) or node._get_node(key)._is_interpolation():
            continue
        found += _unknown_keys(node[key], name)
    return found


def _close_key(name: str, node: Any) -> str:
    import dataclasses
    import difflib

    parent, _, leaf = name.rpartition(".")
    typ = OmegaConf.get_type(OmegaConf.select(node, parent) if parent else node)
    keys = [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ) else []
    if parent == "trainer":
        keys += [k for k in trainer_kwargs() if k not in keys]
    near = difflib.get_close_matches(leaf, keys, n=1)
    return f" (did you mean {parent + '.' if parent else ''}{near[0]}?)" if near else ""


def check_resolution(cfg: DictConfig) -> None:
    """model.resolution must be a multiple of what the model's down-sampling path needs (its config says)."""
    from lit_models.registry import resolution_multiple

    res = OmegaConf.select(cfg, "model.resolution", default=None)
    if res is None or cfg.get("model") is None:
        return
    multiple, why = resolution_multiple(cfg.model)
    if multiple > 1 and int(res) % multiple:
        lo = int(res) // multiple * multiple
        raise ConfigError(f"model.resolution={res} must be a multiple of {multiple} for model={cfg.model.name} ({why}); "
                          f"try {lo or multiple} or {lo + multiple}")


def check_data_root(cfg: DictConfig) -> None:
    """`data.root` set and holding clips (SynthFaces roots are rendered later; shards are checked by their reader)."""
    d = cfg.get("data")
    if d is None or d.get("synth") is not None or d.get("shards") or d.get("layout") == "shards":
        return
    raw = OmegaConf.to_container(d, resolve=False).get("root")
    env = __import__("re").search(r"oc\.env:([A-Za-z_][A-Za-z0-9_]*)", str(raw or ""))
    hint = f" or set {env.group(1)}" if env else ""
    root = OmegaConf.select(cfg, "data.root", default=None, throw_on_missing=False)
    if root in (None, "", "???"):
        raise ConfigError(f"data.root is not set: pass data.root=/path/to/{d.get('name', 'clips')}{hint}")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data.root={root} does not exist{' (from ' + env.group(1) + ')' if env and env.group(1) in os.environ else ''}")
    from datamodules.video import IMAGE_EXTS, VIDEO_EXTS

    for _, _, files in os.walk(path, followlinks=True):
        if any(f.lower().endswith(VIDEO_EXTS + IMAGE_EXTS) for f in files):
            return
    raise ConfigError(f"data.root={root} holds no video clips or frame folders (layout={d.get('layout')}; FOMM: "
                      f"root/{{train,test}}/*.mp4)")


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run's unique directory: `run_dir=` when given (resume), else Hydra's output directory."""
    run_dir = OmegaConf.select(cfg, "run_dir", default=None)
    if run_dir in (None, "???") or OmegaConf.is_missing(cfg, "run_dir"):
        from hydra.core.hydra_config import HydraConfig

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
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


DONE_FILE = "train_done.json"


def finished_run(cfg: DictConfig, run_dir: Path) -> dict | None:
    """With resume=true: the results of a run that already finished what `cfg` asks (the same resolved config,
    `resume`/`run_dir` aside), from its `train_done.json`; None when there is work left."""
    import json

    done = run_dir / DONE_FILE
    if not cfg.get("resume") or not done.exists():
        return None
    try:
        record = json.loads(done.read_text())
    except ValueError:
        return None
    if record.get("config_sha256") != _run_fingerprint(cfg) or not Path(record.get("ckpt") or "").exists():
        return None   # another max_steps / protocol / anything: there is work to do (resume from last.ckpt)
    log.info("%s finished before (%s): not redone", run_dir, done.name)
    return record.get("results", {})


def _run_fingerprint(cfg: DictConfig) -> str:
    """sha256 of the resolved config without `resume` / `run_dir` (how a run was continued, not what it is)."""
    import hashlib

    container = OmegaConf.to_container(cfg, resolve=True)
    for key in ("resume", "run_dir"):
        container.pop(key, None)
    if not container.get("callbacks", True):   # no extra callbacks: the same run as before the `callbacks` key
        container.pop("callbacks")
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True).encode()).hexdigest()


def mark_finished(cfg: DictConfig, run_dir: Path, results: dict) -> None:
    """`train_done.json`: this run finished everything its config asks (what a relaunched sweep skips)."""
    from toolbox.io import atomic_write_json

    atomic_write_json(run_dir / DONE_FILE, {"config_sha256": _run_fingerprint(cfg), "max_steps": int(cfg.trainer.max_steps),
                                            "ckpt": results.get("ckpt"), "evaluated": bool(cfg.evaluate_after_train),
                                            "results": results}, strict=True)
    (run_dir / PREEMPT_FILE).unlink(missing_ok=True)   # nothing left to resume (preemptions.jsonl keeps the history)


def task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

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
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(getattr(hc, "mode", "")).endswith("MULTIRUN"):
        return Path(hc.sweep.dir)
    return None


def wandb_identity(cfg: DictConfig, run_dir: Path, job_type: str = "train", link: dict | None = None) -> dict:
    """Project, entity, group, name, tags and job type of this run's W&B run (conventions: ``eval.dashboard``).

    A sweep job's group is ``<sweep name>-<sweep timestamp>``; ``link`` (the ``wandb_run.json`` of a checkpoint's
    training run) puts an evaluation into that run's group. Project and entity are always the W&B logger entry's
    (``logger.wandb.project`` / ``logger.wandb.entity``); its ``group`` overrides the lab's, its ``tags`` are added."""
    from eval.dashboard import axis_tags, sweep_group, wandb_settings

    ws = wandb_settings(cfg.get("logger")) or {"entry": "wandb", "project": "portraitlab", "entity": None,
                                               "group": None, "tags": []}
    sdir = sweep_dir()
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


# Keywords of a W&B logger entry that the lab sets itself (build_loggers), and where they come from instead
_WANDB_RESERVED = {"id": "wandb_id.txt in the run directory, so that resume=true continues the run",
                   "version": "wandb_id.txt in the run directory, so that resume=true continues the run",
                   "name": "<name>-<run dir>; an evaluation is named after its training run",
                   "job_type": "the entry point: train / eval", "config": "the run's resolved config",
                   "resume": "'allow', with the id from wandb_id.txt", "offline": "the entry's mode",
                   "experiment": "the entry's own keys"}
# Hydra's instantiate keywords (not constructor arguments)
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _logger_target(name: str, node: Any):
    """A ``logger.<name>`` entry's ``_target_``, imported: a ``lightning.pytorch.loggers.Logger`` class (or a
    callable that returns one); a ConfigError naming the entry otherwise."""
    from hydra._internal.utils import _locate   # what hydra.utils.instantiate imports _target_ with (no error log)
    from lightning.pytorch.loggers import Logger

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"logger.{name} needs a _target_ (a lightning.pytorch.loggers class path, e.g. "
                          f"lightning.pytorch.loggers.TensorBoardLogger) or null to switch it off")
    try:
        target = _locate(str(node._target_))
    except Exception as e:
        why = str(e).strip().splitlines()[-1 if isinstance(e.__cause__, ImportError) else 0]
        raise ConfigError(f"logger.{name}._target_={node._target_!r} cannot be imported ({why})") from None
    if isinstance(target, type) and not issubclass(target, Logger) or not callable(target):
        raise ConfigError(f"logger.{name}._target_={node._target_!r} is not a Lightning logger "
                          f"(a lightning.pytorch.loggers.Logger class)")
    return target


def _logger_params(target: Any) -> tuple[set[str], bool]:
    """The keyword arguments a logger entry's target takes, and whether it also takes any (``**kwargs``); a W&B
    logger's ``**kwargs`` go to ``wandb.init``, whose keywords are taken as its own."""
    import inspect

    from eval.dashboard import is_wandb_logger

    sig = inspect.signature(target.__init__ if isinstance(target, type) else target)
    params = {n for n, p in sig.parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    if open_ended and is_wandb_logger(target):
        import wandb

        params |= {n for n in inspect.signature(wandb.init).parameters if n != "self"}
        open_ended = False
    return params, open_ended


def check_loggers(cfg: DictConfig) -> None:
    """The ``logger`` group: every entry null or ``{_target_: <Lightning Logger>, ...}`` whose keys its class takes
    (a typo names the nearest one), at most one W&B entry, its mode one of WANDB_MODES, none of the keys the lab
    sets itself (_WANDB_RESERVED)."""
    import difflib

    from eval.dashboard import is_wandb_logger

    wandb_entries = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        target = _logger_target(name, node)
        params, open_ended = _logger_params(target)
        if not open_ended:
            for key in node.keys():
                if key not in params and key not in _HYDRA_KEYS:
                    near = difflib.get_close_matches(str(key), sorted(params), n=1)
                    raise ConfigError(f"logger.{name}.{key} is not an argument of {node._target_}"
                                      + (f" (did you mean logger.{name}.{near[0]}?)" if near else ""))
        if is_wandb_logger(target):
            wandb_entries.append(str(name))
            for key in node.keys():
                if key in _WANDB_RESERVED:
                    raise ConfigError(f"logger.{name}.{key} is set by the lab ({_WANDB_RESERVED[key]})")
            mode = node.get("mode")
            if mode is not None and str(mode) not in WANDB_MODES:
                raise ConfigError(f"logger.{name}.mode={mode!r} is not one of {', '.join(WANDB_MODES)}")
    if len(wandb_entries) > 1:
        raise ConfigError(f"logger.{wandb_entries[0]} and logger.{wandb_entries[1]} are both W&B loggers: a run "
                          f"logs to one W&B run (set one of them to null)")


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

    from eval.dashboard import is_wandb_logger, wandb_mode

    check_loggers(cfg)
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
            from eval.dashboard import write_run_info

            write_run_info(run_dir, info)
    return loggers


def _wandb_run_kwargs(cfg: DictConfig, run_dir: Path, job_type: str, link: dict | None,
                      extra_config: dict | None) -> dict:
    """The W&B run's id (``wandb_id.txt``), name, group, tags, job type and config (``_identity``: what
    ``wandb_run.json`` records)."""
    from eval.dashboard import read_run_info

    id_file = run_dir / "wandb_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        import uuid

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


def wandb_run_dir(loggers: list) -> str | None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            return str(Path(logger.experiment.dir).parent)
    return None


class RNGStateCallback(L.Callback):
    """Saves and restores the Python/NumPy/torch RNG states in checkpoints, so `resume=true` continues exactly."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types and tensors only: Lightning loads checkpoints with weights_only=True
        state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                         int(has_gauss), float(gauss)],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or parameter; raised before any checkpoint of that state is written."""


def _loss_tensors(outputs: Any) -> dict[str, torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return {"loss": outputs}
    if isinstance(outputs, dict):
        return {str(k): v for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    return {}


class FiniteCheck(L.Callback):
    """Stops training at the first non-finite training loss (any tensor the training step returns) or parameter.

    Runs in ``on_train_batch_end``, which Lightning calls for ordinary callbacks before ``ModelCheckpoint`` (it
    orders checkpoint callbacks last), so the non-finite state is never saved and ``last.ckpt`` stays the last good
    one. The parameter check is one reduction per parameter and a single host sync per step.
    ``trainer.finite_check=false`` turns it off; ``trainer.detect_anomaly=true`` adds torch's anomaly mode (slow)
    to find the operation that produced the first NaN in the backward pass."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bad = [f"{k}={v.detach().float().mean().item():g}" for k, v in _loss_tensors(outputs).items()
               if not bool(torch.isfinite(v.detach()).all())]
        if not bad:
            params = [(n, p) for n, p in pl_module.named_parameters() if p.is_floating_point()]
            if params and not bool(torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).all()):
                bad = [f"parameter {next(n for n, p in params if not bool(torch.isfinite(p.detach()).all()))}"]
        # every rank stops together (a rank that raised alone would leave the others waiting in a collective)
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(bool(bad), all=False) and not bad:
            bad = ["values on another rank"]
        if bad:
            ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise NonFiniteTrainingError(
                f"training stopped: non-finite {', '.join(bad)} at step {trainer.global_step} "
                f"(lower model.lr, set trainer.gradient_clip_val, or find the op with trainer.detect_anomaly=true; "
                f"trainer.finite_check=false disables this check). Last good checkpoint: {ckpt}")


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
    another filesystem, so a full disk or a kill mid-copy left a truncated checkpoint under the real name."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from toolbox.io import atomic_write_bytes_with

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
            if storage_options is not None:
                raise TypeError(f"{type(self).__name__} takes no storage_options")
            atomic_write_bytes_with(path, lambda f: torch.save(checkpoint, f))

    return AtomicCheckpointIO()
class SampleIndexRecorder(L.Callback):
    """``trainer.record_sample_indices``: appends ``{"step", "index": [...]}`` per training batch to
    ``run_dir/samples/rank<r>.jsonl`` (the ``meta.index`` of each sample), so a DDP run can show which samples
    every rank consumed (disjoint strides of one stream) and a resumed run that it continued the stream."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "samples"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        index = (batch.get("meta") or {}).get("index") if isinstance(batch, dict) else None
        if index is None:
            return
        import json

        self.dir.mkdir(parents=True, exist_ok=True)
        values = index.tolist() if hasattr(index, "tolist") else list(index)
        with open(self.dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": int(trainer.global_step), "index": [int(v) for v in values]}) + "\n")


def _import_class(path: str) -> type:
    import importlib

    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"trainer.fsdp_wrap_modules / activation_checkpointing: cannot import {path!r} ({e})") from e


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
    classes = {_import_class(p) for p in tc.fsdp_wrap_modules or []}
    recompute = {_import_class(p) for p in tc.activation_checkpointing or []}
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


# lightning.Trainer keywords the lab builds itself from other config keys: `+trainer.<kw>` cannot set them
_TRAINER_RESERVED = {"default_root_dir": "run_dir", "logger": "the logger group (logger=...)",
                     "callbacks": "the callbacks group (callbacks=early_stopping) or a callbacks: {name: {_target_}} dict",
                     "plugins": "nothing (the lab's atomic checkpoint IO plugin)"}


# TrainerConfig keys the lab reads itself (its checkpoint callbacks, checks, FSDP strategy details): the Trainer node
# that hydra.utils.instantiate builds is the trainer config without them
_LAB_TRAINER_KEYS = ("checkpoint_every_n_steps", "keep_last_n", "keep_every_n_steps", "finite_check",
                     "fsdp_wrap_modules", "activation_checkpointing", "fsdp_sharding_strategy", "fsdp_cpu_offload",
                     "record_sample_indices")


def trainer_kwargs() -> tuple[str, ...]:
    """Every keyword ``lightning.Trainer.__init__`` accepts (what ``+trainer.<kw>=`` may set)."""
    import inspect

    return tuple(n for n, p in inspect.signature(L.Trainer.__init__).parameters.items()
                 if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def check_trainer_passthrough(tc: DictConfig) -> None:
    """``+trainer.<kw>`` keys the schema does not declare must be ``lightning.Trainer`` arguments (``profiler``,
    ``benchmark``, ``overfit_batches``, ``barebones`` …) that the lab does not set itself; build_trainer passes them
    to the Trainer through hydra.utils.instantiate (``_target_`` values built:
    ``+trainer.profiler={_target_: lightning.pytorch.profilers.SimpleProfiler}``)."""
    import dataclasses

    from experiments.schema import TrainerConfig

    declared = {f.name for f in dataclasses.fields(TrainerConfig)}
    accepted = set(trainer_kwargs())
    for key in tc.keys():
        if key in declared:
            continue
        if key in _TRAINER_RESERVED:
            raise ConfigError(f"trainer.{key} is set by the lab; use {_TRAINER_RESERVED[key]}")
        if key not in accepted:
            raise ConfigError(f"trainer.{key} is not a config key or lightning.Trainer argument"
                              f"{_close_key(f'trainer.{key}', OmegaConf.create({'trainer': tc}))}")


def build_callbacks(cfg: DictConfig) -> list:
    """The ``callbacks`` dict (config group ``callbacks/``): each ``name: {_target_: ...}`` built with
    ``hydra.utils.instantiate``, in the dict's order; ``name: null`` switches an entry off."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"callbacks.{name} needs a _target_ (a lightning Callback class path)")
        try:
            cb = instantiate(node, _convert_="all")
        except Exception as e:   # hydra wraps import/constructor errors: say which entry
            raise ConfigError(f"callbacks.{name}: cannot build {node._target_} ({e})") from e
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks.{name}: {node._target_} is not a lightning Callback")
        out.append(cb)
    return out


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
    import warnings   # the sample stream is resumable (datamodules: sample i = f(seed, i), started at the position)
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if tc.enable_progress_bar:   # a bar on a terminal; plain "step k/N … loss … ETA" lines in a log
        from toolbox.progress import lightning_progress_bar, mode_for

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
    check_trainer_passthrough(tc)   # `+trainer.<kw>`: any other lightning.Trainer argument; a typo is an error
    node = OmegaConf.masked_copy(tc, [k for k in tc.keys() if k not in _LAB_TRAINER_KEYS])
    # the lab's parts: the run directory, the built strategy, loggers, callbacks and the atomic checkpoint IO
    built = dict(default_root_dir=str(run_dir), strategy=build_strategy(tc), check_val_every_n_epoch=None,
                 enable_progress_bar=tc.enable_progress_bar and any(isinstance(c, L.pytorch.callbacks.ProgressBar)
                                                                    for c in callbacks),
                 logger=loggers or False, callbacks=callbacks, plugins=plugins)
    from hydra.utils import instantiate

    try:
        trainer = instantiate(node, _convert_="all", **built)
    except Exception as e:   # hydra wraps the constructor's error: say which config it was
        raise ConfigError(f"trainer: cannot build {node.get('_target_')} ({e})") from e
    if not isinstance(trainer, L.Trainer):
        raise ConfigError(f"trainer._target_={node.get('_target_')} is not a lightning Trainer")
    return trainer


@contextlib.contextmanager
def short_errors():
    """CLI entry points: a user error (bad config key, non-finite training, a directory another process writes)
    ends the process with exit status 1 and its one-paragraph message, not a traceback."""
    from toolbox.locks import DirectoryLocked

    try:
        yield
    except (ConfigError, NonFiniteTrainingError, DirectoryLocked) as err:
        if isinstance(err, ConfigError):
            _drop_unused_hydra_dir()
        sys.stdout.flush()
        raise SystemExit(f"error: {err}") from None


def _drop_unused_hydra_dir() -> None:
    """A config error stops the run before it writes anything: remove the output directory Hydra made for it
    (only when it holds nothing but Hydra's own `.hydra/` and log file)."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or in_multirun():
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    if out.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        try:
            out.parent.rmdir()   # runs/<name>/ when this was its only run
        except OSError:
            pass


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", stream=sys.stdout)
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def finish_loggers(loggers: list) -> None:
    """Close W&B runs (each multirun job is its own run) and flush file loggers."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            logger.finalize("success")
            if logger._experiment is not None:
                logger.experiment.finish()
            wandb.finish()
        else:
            logger.finalize("success")
