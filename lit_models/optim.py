"""Optimizer and learning-rate schedule as ``_partial_`` config nodes (lightning-hydra-template style).

``model.optimizer`` names a ``torch.optim`` class (``_target_``) with its keyword arguments; ``model.scheduler`` (or
null) names a schedule factory. Hydra instantiates each as a ``functools.partial`` and the module supplies what
only it knows: the parameters to the optimizer; the optimizer (and, for diffusers' ``get_scheduler``, the number
of training steps) to the scheduler. Any other optimizer is a command line away::

    model.optimizer._target_=torch.optim.AdamW +model.optimizer.amsgrad=true
    model.optimizer._target_=torch.optim.SGD model.optimizer.betas=null +model.optimizer.momentum=0.9

A null keyword is not passed (the target's own default applies), and ``experiments.validation`` binds the node's keys to the target's signature before anything is built.

The configs of checkpoints and run directories written with the flat keys (``lr``, ``betas``, ``weight_decay``,
``fused_adam``, ``lr_milestones``, ``lr_gamma``, ``lr_scheduler``, ``lr_warmup_steps``) are rewritten to these
nodes by :func:`upgrade_flat_optim_keys` / :func:`upgrade_run_config`, the one place that knows the old layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

MULTISTEP_TARGET = "torch.optim.lr_scheduler.MultiStepLR"
DIFFUSERS_TARGET = "diffusers.optimization.get_scheduler"


@dataclass
class AdamConfig:
    """``torch.optim.Adam`` keyword arguments (the parameters are supplied by the module; null: not passed)."""

    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 2e-4
    betas: Optional[list[float]] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: Optional[float] = 0.0


@dataclass
class MultiStepLRConfig:
    """``torch.optim.lr_scheduler.MultiStepLR``: lr × ``gamma`` at each milestone (in optimizer steps). No
    milestones: no scheduler is built."""

    _target_: str = MULTISTEP_TARGET
    _partial_: bool = True
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class DiffusersSchedulerConfig:
    """``diffusers.optimization.get_scheduler``: ``name`` one of constant | constant_with_warmup | linear | cosine |
    cosine_with_restarts | polynomial | piecewise_constant, stepped per optimizer step; ``num_training_steps`` is
    ``trainer.max_steps``, supplied by the module. constant without warmup: no scheduler is built."""

    _target_: str = DIFFUSERS_TARGET
    _partial_: bool = True
    name: str = "constant"
    num_warmup_steps: int = 0


def is_partial_node(node: Any) -> bool:
    """A config mapping that Hydra instantiates as a ``functools.partial`` of its ``_target_``."""
    try:
        return bool(node.get("_partial_", False)) and "_target_" in node
    except AttributeError:
        return False


def partial_kwargs(node: Any) -> dict:
    """The keywords a ``_partial_`` node passes: its keys except Hydra's ``_…_`` ones and null values."""
    return {str(k): v for k, v in node.items() if not str(k).startswith("_") and v is not None}


def instantiate_partial(node: Any):
    """The ``functools.partial`` a ``_partial_`` node describes, null keywords left out; containers become plain
    lists/dicts (so that an optimizer's param_groups and its state_dict hold plain types)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    keep = {k: v for k, v in plain.items() if str(k).startswith("_") or v is not None}
    return instantiate(keep, _convert_="all")


# ---- configs with the flat keys -----------------------------------------------------------------------------------
OPTIMIZER_KEYS = ("lr", "betas", "weight_decay")
FLAT_KEYS = OPTIMIZER_KEYS + ("fused_adam", "lr_milestones", "lr_gamma", "lr_scheduler", "lr_warmup_steps")
# old key → new key (the axes of sweeps and searches)
FLAT_KEY_MOVES = {"lr": "optimizer.lr", "betas": "optimizer.betas", "weight_decay": "optimizer.weight_decay",
                  "fused_adam": "optimizer.fused", "lr_milestones": "scheduler.milestones",
                  "lr_gamma": "scheduler.gamma", "lr_scheduler": "scheduler.name",
                  "lr_warmup_steps": "scheduler.num_warmup_steps"}


def upgrade_flat_optim_keys(cfg: Any) -> Any:
    """A model config with the flat optimizer keys → the same settings as ``optimizer`` / ``scheduler`` nodes:
    ``lr``, ``betas``, ``weight_decay`` → Adam's node (``fused_adam: true`` → ``fused: true``; false →
    ``fused: null``, torch's default implementation); ``lr_milestones`` / ``lr_gamma`` → a MultiStepLR node;
    ``lr_scheduler`` / ``lr_warmup_steps`` → a ``get_scheduler`` node. A config without flat keys is returned as
    is (the same object); a DictConfig comes back as a DictConfig, a dict as a dict."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, (dict, DictConfig)) or not any(k in cfg for k in FLAT_KEYS):
        return cfg
    was_config = isinstance(cfg, DictConfig)
    old = OmegaConf.to_container(cfg, resolve=True) if was_config else dict(cfg)
    optimizer = dict(old.pop("optimizer", None) or {"_target_": "torch.optim.Adam", "_partial_": True})
    for key in OPTIMIZER_KEYS:
        if key in old:
            optimizer[key] = old.pop(key)
    if "betas" in optimizer:
        optimizer["betas"] = list(optimizer["betas"])
    if "fused_adam" in old:
        optimizer["fused"] = True if old.pop("fused_adam") else None
    new = {**old, "optimizer": optimizer}
    if "lr_milestones" in old or "lr_gamma" in old:
        new["scheduler"] = {"_target_": MULTISTEP_TARGET, "_partial_": True,
                            "milestones": list(new.pop("lr_milestones", None) or []), "gamma": new.pop("lr_gamma", 0.1)}
    elif "lr_scheduler" in old or "lr_warmup_steps" in old:
        new["scheduler"] = {"_target_": DIFFUSERS_TARGET, "_partial_": True,
                            "name": str(new.pop("lr_scheduler", "constant")),
                            "num_warmup_steps": int(new.pop("lr_warmup_steps", 0))}
    return OmegaConf.create(new) if was_config else new


def upgrade_run_config(cfg: dict) -> dict:
    """A run directory's ``config.yaml`` (as a plain dict) with the flat model keys → the current layout: the model
    section through :func:`upgrade_flat_optim_keys`, ``axes`` entries ``model.<flat key>`` renamed."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        return cfg
    model = cfg["model"]
    if not any(k in model for k in FLAT_KEYS):
        return cfg
    out = {**cfg, "model": upgrade_flat_optim_keys(model)}
    if isinstance(cfg.get("axes"), list):
        out["axes"] = [rename_flat_key(a) for a in cfg["axes"]]
    return out


def rename_flat_key(key: str) -> str:
    """``model.lr`` → ``model.optimizer.lr`` (any :data:`FLAT_KEY_MOVES` key); other keys unchanged."""
    head, _, leaf = str(key).rpartition(".")
    return f"model.{FLAT_KEY_MOVES[leaf]}" if head == "model" and leaf in FLAT_KEY_MOVES else key


def flat_optim_keys(model: dict) -> dict:
    """The inverse of :func:`upgrade_flat_optim_keys` on a plain model config: the same settings written with the
    flat keys (what a run directory written before the nodes holds), so that a finished run's recorded config
    fingerprint can still be recognised. The MultiStepLR node's keys are written even without milestones, as the
    flat MRFA schema had them; ``fused: null`` → ``fused_adam: false``."""
    out = dict(model)
    optimizer, scheduler = dict(out.pop("optimizer", None) or {}), out.pop("scheduler", None)
    out.update({k: optimizer[k] for k in OPTIMIZER_KEYS if k in optimizer})
    if "fused" in optimizer:
        out["fused_adam"] = bool(optimizer["fused"])
    if scheduler and scheduler.get("_target_") == MULTISTEP_TARGET:
        out.update(lr_milestones=list(scheduler.get("milestones") or []), lr_gamma=scheduler.get("gamma", 0.1))
    elif scheduler and scheduler.get("_target_") == DIFFUSERS_TARGET:
        out.update(lr_scheduler=scheduler.get("name", "constant"),
                   lr_warmup_steps=scheduler.get("num_warmup_steps", 0))
    return out
