"""Epoch arithmetic of the official FOMM / MRFA training recipe, from the data on disk.

The official ``run.py`` (MRFA, FOMM) divides the configured batch over the DDP processes
(``batch_size = int(batch_size / world_size)``); ``train.py`` wraps the dataset in ``DatasetRepeater(num_repeats)``
(length ``U · R``, ``U`` = training identities with ``id_sampling``, else training clips), shards it with
``DistributedSampler`` (``ceil(U · R / W)`` samples per process) and drops the last incomplete batch; the LR steps
×0.1 at ``epoch_milestones`` (MultiStepLR per epoch). So

    steps per epoch  S = floor(ceil(U · R / W) / B_p),   B_p = int(B / W)
    LR milestones    = [m · S for m in epoch_milestones],  max_steps = num_epochs · S

(``= U · R / (B_p · W)`` when it divides). In configs: ``${data_recipe:batch_per_process,80}``,
``${data_recipe:steps_per_epoch}``, ``${data_recipe:epoch_step,60}`` — they read ``data`` (root, layout, splits,
``id_sampling``, ``num_repeats``, ``batch_size``) and ``trainer`` (``devices`` × ``num_nodes``) of the run config
and print what they derive.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

_PRINTED: set = set()


def world_size(devices: Any, num_nodes: Any = 1) -> int:
    """Processes of a Lightning run: ``trainer.devices`` (an int or a list of device ids) × ``trainer.num_nodes``."""
    if isinstance(devices, str):
        if devices.strip().lstrip("-").isdigit():
            devices = int(devices)
        else:
            raise ValueError(f"trainer.devices={devices!r}: the official recipe splits the batch over the processes; "
                             "set trainer.devices to a number of devices")
    n = len(devices) if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") else int(devices)
    if n < 1:
        raise ValueError(f"trainer.devices={devices!r} must name at least one device")
    return n * max(1, int(num_nodes or 1))


def batch_per_process(global_batch: int, world: int) -> int:
    """The official ``int(batch_size / world_size)``."""
    b = int(int(global_batch) / int(world))
    if b < 1:
        raise ValueError(f"batch {global_batch} over {world} processes leaves no sample per process")
    return b


def steps_per_epoch(units: int, num_repeats: int, batch: int, world: int) -> int:
    """``floor(ceil(units · num_repeats / world) / batch)``: DistributedSampler's share, drop_last batches."""
    per_process = math.ceil(int(units) * int(num_repeats) / int(world))
    return per_process // int(batch)


@lru_cache(maxsize=16)
def training_units(root: str, layout: str, id_sampling: bool, val_fraction: float, test_fraction: float,
                   split_seed: int) -> tuple[int, int]:
    """(units, clips) of the training split as the DataModule makes it: units = identities with ``id_sampling``,
    else clips. No decoding (the scan may still skip a broken clip: the DataModule warns when counts differ)."""
    from datamodules.layouts import discover
    from datamodules.splits import split_records

    if root in (None, "", "???") or not Path(root).is_dir():
        raise FileNotFoundError(f"data.root={root!r} is not a folder: the recipe derives its steps per epoch from "
                                "the training data (set data.root)")
    train = split_records(discover(root, layout), val_fraction, test_fraction, split_seed)["train"]
    if not train:
        raise ValueError(f"data.root={root}: no training clips (layout={layout})")
    ids = {r.identity for r in train}
    return (len(ids) if id_sampling else len(train)), len(train)


def _say(key: tuple, line: str) -> None:
    if key not in _PRINTED:
        _PRINTED.add(key)
        print(line, flush=True)


def resolve_recipe(root_cfg, what: str, value=None):
    """The ``${data_recipe:WHAT[,VALUE]}`` resolver (see the module doc)."""
    data, trainer = root_cfg.data, root_cfg.get("trainer") or {}
    world = world_size(trainer.get("devices", 1), trainer.get("num_nodes", 1))
    if what == "batch_per_process":
        if value is None:
            raise ValueError("${data_recipe:batch_per_process,B} needs the official (global) batch B")
        b = batch_per_process(int(value), world)
        _say(("b", value, world), f"data recipe: batch {value} over {world} process(es) = {b} per process "
                                  f"(official run.py: int({value} / world_size))")
        return b
    if what in ("steps_per_epoch", "epoch_step"):
        root = str(data.root) if not OmegaConf.is_missing(data, "root") else "???"
        if root in ("", "???") or not Path(root).is_dir():
            # composing without data (tests, `experiments.plan`): a placeholder; `experiments.train` stops before
            # any work with "data.root is not set / does not exist" (runtime.check_data_root)
            _say(("missing", root), f"data recipe: data.root={root!r} is not a folder: steps per epoch unknown "
                                    "(placeholder 1 until data.root names the training data)")
            return 1 if what == "steps_per_epoch" else int(value if value is not None else 1)
        units, clips = training_units(str(data.root), str(data.layout), bool(data.id_sampling),
                                      float(data.val_fraction), float(data.test_fraction), int(data.split_seed))
        b = int(data.batch_size)
        s = steps_per_epoch(units, int(data.num_repeats), b, world)
        if s < 1:
            raise ValueError(f"data recipe: {units} training units × {data.num_repeats} repeats fill no batch of "
                             f"{b} × {world} processes")
        unit = "identities" if data.id_sampling else "clips"
        _say(("s", str(data.root), units, int(data.num_repeats), b, world),
             f"data recipe: {units} training {unit} ({clips} clips) × {data.num_repeats} repeats / ({b} per process × "
             f"{world} processes) = {s} steps per epoch")
        if what == "steps_per_epoch":
            return s
        if value is None:
            raise ValueError("${data_recipe:epoch_step,E} needs an epoch E")
        step = int(value) * s
        _say(("e", str(data.root), s, value), f"data recipe: epoch {value} = step {step}")
        return step
    raise ValueError(f"${{data_recipe:{what}}}: not one of batch_per_process, steps_per_epoch, epoch_step")
