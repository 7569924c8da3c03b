"""Reuse a finished evaluation instead of recomputing it.

An evaluation directory (``eval.runner.run_evaluation``'s output: ``metrics.json``, ``per_frame.csv``,
``per_video.csv``) is reused for a model, protocol and test set when its ``metrics.json`` records the same three
keys the runner itself keys its resumable state by:

* ``model_id`` — ``eval.runner.model_identity``: sha256 of the model class, its hyper-parameters and every tensor of
  its state dict (so EMA vs raw weights, or another ``refine_iters``, are other models);
* ``protocol_hash`` — ``eval.protocol.protocol_hash`` of the resolved protocol (fields that cannot change a number
  excluded);
* ``data_fingerprint`` — ``eval.runner.data_fingerprint`` of the protocol's test set (clips, sizes, mtimes, frame
  indices, crop);

and the same ``run_settings`` (``eval.runner.run_settings``: sampling seed, precision, landmark source, device type).

Where it looks (``candidates``): the checkpoint's run directory and its ``eval/<protocol>/`` folders (what
``experiments.train`` evaluated after training), then the folders the caller names (a previous comparison's or
leaderboard's output) and the evaluation folders up to three levels below them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

log = logging.getLogger("portraitlab.eval")

KEYS = ("model_id", "protocol_hash", "data_fingerprint")
REUSED_FILE = "reused_from.json"
SEARCH_DEPTH = 3   # folders below a search folder that are looked into


def evaluation_key(model, datamodule, protocol, dataset_key: Optional[str] = None) -> dict[str, str]:
    """The three values an evaluation of ``model`` on ``datamodule`` under ``protocol`` records (``KEYS``)."""
    from omegaconf import OmegaConf

    from eval.identity import data_fingerprint, model_identity
    from eval.protocol import protocol_hash
    from eval.samples import eval_dataset

    protocol = protocol if OmegaConf.is_config(protocol) else OmegaConf.create(protocol)
    return {"model_id": model_identity(model), "protocol_hash": protocol_hash(protocol),
            "data_fingerprint": data_fingerprint(eval_dataset(datamodule, protocol), dataset_key)}


def finished(d: Path) -> Optional[dict]:
    """``metrics.json`` of a complete evaluation directory (all three result files present), else None."""
    d = Path(d)
    if not all((d / f).is_file() for f in ("metrics.json", "per_frame.csv", "per_video.csv")):
        return None
    try:
        return json.loads((d / "metrics.json").read_text())
    except ValueError:
        return None


def candidates(ckpt: Optional[str | Path], search: Iterable[str | Path] = ()) -> list[Path]:
    """Directories that may hold an evaluation of ``ckpt``: its run directory (``…/checkpoints/x.ckpt`` → ``…``) and
    ``eval/*`` there, then each of ``search`` and every folder up to ``SEARCH_DEPTH`` levels below it that holds a
    ``metrics.json``."""
    out: list[Path] = []

    def add(d: Path) -> None:
        if d.is_dir() and d not in out:
            out.append(d)
            for sub in sorted((d / "eval").glob("*")) if (d / "eval").is_dir() else []:
                if sub.is_dir() and sub not in out:
                    out.append(sub)

    if ckpt:
        p = Path(ckpt).absolute()
        if p.parent.name == "checkpoints":
            add(p.parent.parent)
    for s in search:
        s = Path(s).absolute()
        add(s)
        for depth in range(1, SEARCH_DEPTH + 1):   # a comparison's <label>/, a leaderboard's <label>/<protocol>/
            for found in sorted(s.glob("/".join(["*"] * depth) + "/metrics.json")):
                if not any(part.startswith(".") for part in found.relative_to(s).parts):
                    add(found.parent)
    return out


def find_evaluation(key: dict[str, str], dirs: Iterable[Path],
                    settings: Optional[dict] = None) -> Optional[tuple[Path, dict]]:
    """The first of ``dirs`` holding a finished evaluation whose ``metrics.json`` matches ``key`` on every
    ``KEYS`` field and, when given, records the same ``run_settings`` (seed, precision, landmark source, device
    type: ``eval.runner.run_settings``); None when none does."""
    for d in dirs:
        result = finished(d)
        if result is not None and all(result.get(k) == key[k] for k in KEYS) \
                and (settings is None or result.get("run_settings") == settings):
            return Path(d), result
    return None


def evaluate_or_reuse(model, datamodule, protocol, out_dir: str | Path, ckpt: Optional[str] = None,
                      search: Iterable[str | Path] = (), **kwargs: Any) -> tuple[dict, Path, bool]:
    """``(metrics.json content, directory holding the result files, reused?)``: an existing evaluation matching
    ``evaluation_key`` (``candidates(ckpt, search)``), recorded in ``out_dir/reused_from.json``; else
    ``run_evaluation`` into ``out_dir`` (which resumes finished videos of an interrupted run itself)."""
    from toolbox.io import atomic_write_json

    from eval.runner import run_evaluation, run_settings

    out_dir = Path(out_dir)
    key = evaluation_key(model, datamodule, protocol, kwargs.get("dataset_key"))
    settings = run_settings(model, kwargs.get("device"), kwargs.get("seed", 0), kwargs.get("precision", "auto"),
                            kwargs.get("preprocess", "none"))
    hit = find_evaluation(key, candidates(ckpt, search), settings)
    if hit is not None:
        found, result = hit
        log.info("reusing the evaluation in %s (same model identity, protocol hash and data fingerprint)", found)
        if found.absolute() != out_dir.absolute():
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out_dir / REUSED_FILE, {"dir": str(found.absolute()), **key})
        return {**result, "_dir": str(found)}, found, True
    kwargs.setdefault("loggers", [])
    kwargs.setdefault("progress", True)
    result = run_evaluation(model, datamodule, protocol, out_dir, ckpt=ckpt, **kwargs)
    return {**result, "_dir": str(out_dir)}, out_dir, False
