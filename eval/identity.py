"""What produced an evaluation: the model's identity and the evaluation data's fingerprint.

``eval.runner`` keys its resumable state file by both (with the protocol hash), and ``eval.reuse`` reuses a finished
evaluation only when they match: finished rows are never relabelled as another model's or another data set's.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import torch
from omegaconf import OmegaConf


def model_identity(model) -> str:
    """sha256 of what produces the outputs: the model class, its hyper-parameters (knobs such as ``refine_iters``
    that need no parameter) and every tensor of its state dict (names, dtypes, shapes, bytes).

    Hashing every byte costs seconds at SD scale, and a run evaluates the same weights under several protocols: the
    digest is reused while no tensor was replaced or modified in place (same storage, same autograd version)."""
    state = model.state_dict(keep_vars=True) if hasattr(model, "state_dict") else {}
    key = tuple((k, v.data_ptr(), v._version, tuple(v.shape)) for k, v in state.items() if torch.is_tensor(v))
    hp_text = str(getattr(model, "hparams", None))
    cached = getattr(model, "_identity_cache", None)     # on the object: a new model never inherits it
    if cached is not None and cached[0] == (key, hp_text):
        return cached[1]
    digest = _model_identity(model)
    try:
        object.__setattr__(model, "_identity_cache", ((key, hp_text), digest))
    except (AttributeError, TypeError):   # objects without a __dict__: no cache
        pass
    return digest


def _model_identity(model) -> str:
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    hp = getattr(model, "hparams", None)
    try:
        hp = OmegaConf.to_container(OmegaConf.create(dict(hp)), resolve=True) if hp else {}
    except Exception:  # noqa: BLE001 - unusual hparams: their text still identifies them
        hp = str(hp)
    h.update(json.dumps(hp, sort_keys=True, default=str).encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for k, v in sorted(state.items()):
        if torch.is_tensor(v):
            t = v.detach().cpu().contiguous()
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(ds, dataset_key: Optional[str] = None) -> str:
    """What the evaluation set is: the dataset's own ``fingerprint()`` (clips, sizes, mtimes, frame indices, crop),
    else the caller's ``dataset_key``, else the dataset's type (an in-memory iterable)."""
    fn = getattr(ds, "fingerprint", None)
    if callable(fn):
        return str(fn())
    return str(dataset_key or type(ds).__name__)
