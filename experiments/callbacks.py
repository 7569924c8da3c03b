"""The lab's training callbacks (RNG state in checkpoints, the finite-loss check, the sample-index record) and the
``callbacks`` group's entries."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from experiments.validation import ConfigError


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
                f"(lower model.optimizer.lr, set trainer.gradient_clip_val, or find the op with trainer.detect_anomaly=true; "
                f"trainer.finite_check=false disables this check). Last good checkpoint: {ckpt}")


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
        self.dir.mkdir(parents=True, exist_ok=True)
        values = index.tolist() if hasattr(index, "tolist") else list(index)
        with open(self.dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": int(trainer.global_step), "index": [int(v) for v in values]}) + "\n")


def build_callbacks(cfg: DictConfig) -> list:
    """The ``callbacks`` dict (config group ``callbacks/``): each ``name: {_target_: ...}`` built with
    ``hydra.utils.instantiate``, in the dict's order; ``name: null`` switches an entry off (``validation.
    check_callbacks`` has checked that every other entry has a ``_target_``)."""
    from hydra.utils import instantiate

    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        try:
            cb = instantiate(node, _convert_="all")
        except Exception as e:   # hydra wraps import/constructor errors: say which entry
            raise ConfigError(f"callbacks.{name}: cannot build {node._target_} ({e})") from e
        if not isinstance(cb, L.Callback):
            raise ConfigError(f"callbacks.{name}: {node.get('_target_')} is not a lightning Callback")
        out.append(cb)
    return out

