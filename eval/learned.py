"""Weights of the small SynthFaces-trained evaluation networks (``eval.synth_landmarks``, ``eval.synth_identity``).

They are part of the protocols, so the default ones ship pinned with the repository under
``eval/assets/<kind>/<hash>.pt`` (+ ``<hash>.json``: training config and held-out statistics; ``<hash>`` = sha256 of
the training config): two machines never score with two differently trained networks, and no run pays the
first-use training. Any other config is trained on first use (deterministic) and cached at
``$PORTRAITLAB_CACHE/<kind>/<hash>.pt`` (default ``~/.cache/portraitlab``). Every loaded network's info carries the
sha256 of its weights file and whether it was the shipped one; evaluations copy both into ``metrics.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

log = logging.getLogger("portraitlab.eval")

ASSETS = Path(__file__).resolve().parent / "assets"


def cache_dir(kind: str) -> Path:
    return Path(os.environ.get("PORTRAITLAB_CACHE", Path.home() / ".cache" / "portraitlab")) / kind


def packaged_dir(kind: str) -> Path:
    return ASSETS / kind


def config_hash(cfg) -> str:
    """The 16-hex-digit sha256 of a dataclass config (its fields as sorted JSON): the name of its weights files."""
    from dataclasses import asdict

    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_or_train(kind: str, config_hash: str, build: Callable[[], nn.Module],
                  train: Callable[[], tuple[nn.Module, dict]], root: Optional[Path] = None) -> tuple[nn.Module, dict]:
    """``(model in eval mode without gradients, info)`` for the config with ``config_hash``.

    Looked up in ``root`` when given, else in the shipped ``eval/assets/<kind>`` and then the user cache; trained
    with ``train()`` and saved (atomically: concurrent first uses are safe) into ``root`` or the cache otherwise."""
    from datamodules.utils import atomic_write_json

    roots = [Path(root)] if root is not None else [packaged_dir(kind), cache_dir(kind)]
    for r in roots:
        path, meta = r / f"{config_hash}.pt", r / f"{config_hash}.json"
        if path.is_file() and meta.is_file():
            model = build()
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            info = json.loads(meta.read_text())
            info.update({"weights_sha256": sha256_file(path), "packaged": r == packaged_dir(kind)})
            return model.eval().requires_grad_(False), info
    root = roots[-1]
    path, meta = root / f"{config_hash}.pt", root / f"{config_hash}.json"
    log.warning("training the %s network (config %s, first use; cached at %s)", kind, config_hash, path)
    model, info = train()
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    atomic_write_json(meta, info)
    return model.eval().requires_grad_(False), {**info, "weights_sha256": sha256_file(path), "packaged": False}


def forget(kind: str, config_hash: str, root: Optional[Path] = None) -> Path:
    """Delete the saved weights of a config in ``root`` (default: the user cache) so the next use retrains."""
    root = Path(root) if root is not None else cache_dir(kind)
    for suffix in (".pt", ".json"):
        (root / f"{config_hash}{suffix}").unlink(missing_ok=True)
    return root


def cli(kind: str, description: str, config_cls, network_cls, argv: Optional[list[str]] = None) -> int:
    """``python -m eval.<kind> [--resolution R] [--steps N] [--root DIR] [--retrain]``: load (or train) the network
    of that config and print its info (held-out statistics, weights sha256, shipped or not)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--root", default=None, help=f"folder to load from / save to (default: the shipped "
                    f"eval/assets/{kind}, then $PORTRAITLAB_CACHE/{kind})")
    ap.add_argument("--retrain", action="store_true", help="train even when weights exist (overwrites them in --root)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    cfg = config_cls(resolution=a.resolution, **({"steps": a.steps} if a.steps else {}))
    root = Path(a.root) if a.root else None
    if a.retrain:
        root = forget(kind, cfg.hash(), root)
    net = network_cls(cfg, root=root)
    print(json.dumps(net.info, indent=1))
    return 0


class LearnedNetwork:
    """Base of the callable wrappers (``SynthLandmarkLocator``, ``SynthIdentityEmbedder``): ``cfg`` (default
    ``config_cls()``), ``model`` and ``info`` from the module's ``load_or_train`` (shipped / cached / trained), and the
    device the model runs on. Subclasses set ``config_cls`` and ``load`` and implement ``__call__``."""

    config_cls: type
    load: Callable    # (cfg, root, progress=...) -> (model, info)

    def __init__(self, cfg=None, root: Optional[Path] = None, device="cpu", progress: bool = True):
        self.cfg = cfg or self.config_cls()
        self.model, self.info = type(self).load(self.cfg, root, progress=progress)
        self.to(device)

    def to(self, device) -> "LearnedNetwork":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self
