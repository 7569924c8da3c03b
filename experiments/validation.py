"""Run-config checks beyond the structured schema: unknown keys, value ranges and choices, the model's resolution
multiple, ``data.root``, the ``trainer`` pass-through keywords, the ``callbacks`` and ``logger`` entries. Every
check raises ``ConfigError`` naming the offending key, before any work."""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from lit_models.optim import FLAT_KEY_MOVES, is_partial_node
from toolbox.locate import locate as toolbox_locate

# Choices the structured schema cannot type as enums: OmegaConf reads an enum value by member name, and Lightning's
# precision names ("16-mixed", and 32, which arrives as an int) are not identifiers. Every other closed choice is a
# StrEnum field of its schema and fails at compose time.
CHOICES = {
    "trainer.precision": ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"),
}
WANDB_MODES = ("offline", "online", "disabled", "dryrun")   # a W&B logger entry's `mode` (dryrun = offline)


class ConfigError(ValueError):
    """A config value is out of range; the message names the offending key."""


def locate(path: str, key: str, *, want_class: bool = False) -> Any:
    """The object (with ``want_class``: the class) the dotted path at config key ``key`` names
    (``toolbox.locate``: hydra.utils' lookup); a ConfigError naming ``key`` and the reason otherwise."""
    try:
        return toolbox_locate(path, want_class=want_class)
    except LookupError as e:
        raise ConfigError(f"{key}={str(path)!r} cannot be imported{' as a class' if want_class else ''} "
                          f"({e})") from None


def validate(cfg: DictConfig) -> None:
    """Semantic checks beyond the structured schema (which already rejects unknown keys and wrong types)."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a config key{_close_key(unknown[0], cfg)}: `+key=` adds keys that no "
                          f"schema declares and nothing reads" + (f" (also: {', '.join(unknown[1:4])})" if unknown[1:] else ""))
    check_partial_nodes(cfg.get("model"), "model")
    check_trainer_keys(cfg)
    check_callbacks(cfg)
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
    for name in (cfg.get("extra_eval") or {}):
        if "/" in str(name) or str(name) == str(cfg.eval_protocol.name):
            raise ConfigError(f"extra_eval.{name}: the name must differ from the main protocol's and contain no '/'")
    for key in cfg.get("axes") or []:
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"axes names {key!r}, which is not a config key")


def _unknown_keys(node: Any, path: str = "") -> list[str]:
    """Keys of structured (dataclass-typed) nodes that their dataclass does not declare (for ``trainer``: nor
    ``lightning.Trainer`` takes). Hydra's `+key=value` force-adds a key even to a structured node, where nothing
    would ever read it (`+trainer.max_step=10`)."""
    if not isinstance(node, DictConfig):
        return []
    found: list[str] = []
    typ = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(typ)} if dataclasses.is_dataclass(typ) else None
    if fields is not None and path == "trainer":
        fields = fields | set(trainer_kwargs())
    for key in node.keys():
        name = f"{path}.{key}" if path else str(key)
        if fields is not None and key not in fields and not is_partial_node(node):   # check_partial_nodes
            found.append(name)
            continue
        if OmegaConf.is_missing(node, key) or node._get_node(key)._is_interpolation():
            continue
        found += _unknown_keys(node[key], name)
    return found


def check_partial_nodes(node: Any, path: str) -> None:
    """Every ``_partial_`` node under ``path`` (``model.optimizer``, ``model.scheduler``): its ``_target_`` imports
    and each of its keywords (null ones are not passed) is a parameter of the target, so ``+model.optimizer.amsgrd``
    or an Adam keyword left on ``torch.optim.SGD`` fails here, naming the key and the closest parameter."""
    if not isinstance(node, DictConfig):
        return
    if is_partial_node(node):
        target = locate(str(node._target_), f"{path}._target_")
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            params = None
        if params is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            names = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
            for key in node.keys():
                key = str(key)
                if key.startswith("_") or key in params:
                    continue
                if not node._get_node(key)._is_interpolation() and node[key] is None:
                    continue   # not passed
                near = difflib.get_close_matches(key, names, n=1)
                raise ConfigError(f"{path}.{key} is not an argument of {node._target_}"
                                  + (f" (did you mean {path}.{near[0]}?)" if near else
                                     f" (it takes {', '.join(names)}; {path}.{key}=null leaves it out)"))
    for key in node.keys():
        if not OmegaConf.is_missing(node, key) and not node._get_node(key)._is_interpolation():
            check_partial_nodes(node[key], f"{path}.{key}")


def _close_key(name: str, node: Any) -> str:
    parent, _, leaf = name.rpartition(".")
    typ = OmegaConf.get_type(OmegaConf.select(node, parent) if parent else node)
    keys = [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ) else []
    if parent == "trainer":
        keys += [k for k in trainer_kwargs() if k not in keys]
    near = difflib.get_close_matches(leaf, keys, n=1)
    if parent == "model" and leaf in FLAT_KEY_MOVES:   # the optimizer / scheduler keys live in their nodes
        return f" (did you mean model.{FLAT_KEY_MOVES[leaf]}?)"
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
    env = re.search(r"oc\.env:([A-Za-z_][A-Za-z0-9_]*)", str(raw or ""))
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


# lightning.Trainer keywords the lab builds itself from other config keys: `+trainer.<kw>` cannot set them
_TRAINER_RESERVED = {"default_root_dir": "run_dir", "logger": "the logger group (logger=...)",
                     "callbacks": "the callbacks group (callbacks=early_stopping) or a callbacks: {name: {_target_}} dict",
                     "plugins": "nothing (the lab's atomic checkpoint IO plugin)"}

def trainer_kwargs() -> tuple[str, ...]:
    """Every keyword ``lightning.Trainer.__init__`` accepts (what ``+trainer.<kw>=`` may set)."""
    return tuple(n for n, p in inspect.signature(L.Trainer.__init__).parameters.items()
                 if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def check_trainer_keys(cfg: DictConfig) -> None:
    """``trainer`` keys that ``build_trainer`` sets from elsewhere (_TRAINER_RESERVED) cannot be set; the other
    ``+trainer.<kw>`` keys (any ``lightning.Trainer`` argument) are checked by _unknown_keys."""
    for key in (cfg.get("trainer") or {}):
        if key in _TRAINER_RESERVED:
            raise ConfigError(f"trainer.{key} is set by the lab; use {_TRAINER_RESERVED[key]}")


def check_callbacks(cfg: DictConfig) -> None:
    """Every ``callbacks`` entry null or a node with a ``_target_``."""
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and (not isinstance(node, DictConfig) or "_target_" not in node):
            raise ConfigError(f"callbacks.{name} needs a _target_ (a lightning Callback class path) or null")


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
    from lightning.pytorch.loggers import Logger

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"logger.{name} needs a _target_ (a lightning.pytorch.loggers class path, e.g. "
                          f"lightning.pytorch.loggers.TensorBoardLogger) or null to switch it off")
    target = locate(node._target_, f"logger.{name}._target_")
    if isinstance(target, type) and not issubclass(target, Logger) or not callable(target):
        raise ConfigError(f"logger.{name}._target_={node._target_!r} is not a Lightning logger "
                          f"(a lightning.pytorch.loggers.Logger class)")
    return target


def _logger_params(target: Any) -> tuple[set[str], bool]:
    """The keyword arguments a logger entry's target takes, and whether it also takes any (``**kwargs``); a W&B
    logger's ``**kwargs`` go to ``wandb.init``, whose keywords are taken as its own."""
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

