"""Read an offline W&B run back from disk (no server, no login): its history rows and summary.

A `run-<id>.wandb` file is a header (`:W&B`, magic 0xBEE1, version) followed by a LevelDB-style record log
(32 KiB blocks; each chunk: crc32, length, type FULL/FIRST/MIDDLE/LAST); every record is a
`wandb_internal_pb2.Record` protobuf. `python -m experiments.wandb_offline RUN_OR_SWEEP_DIR` prints, per run, its
identity (group, job type, tags), the last history row, the summary and the artifacts.
"""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Iterator

_BLOCK = 32768
_HEADER = 7


def run_file(path: str | Path) -> Path:
    """Accept a `.wandb` file, an `offline-run-*` dir, or any dir containing exactly one such run."""
    path = Path(path)
    if path.is_file():
        return path
    files = sorted(path.rglob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb under {path}, found {len(files)}")
    return files[0]


def iter_records(path: str | Path) -> Iterator[bytes]:
    data = run_file(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        chunk = data[pos:pos + length]
        pos += length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _records(path: str | Path, wait_s: float = 30.0) -> list:
    """Parsed records of a finished run. W&B's writer flushes in the background after `finish()` returns, so wait
    (up to `wait_s`) for the run's closing `exit` record rather than read a half-written file."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + wait_s
    while True:
        records = []
        for raw in iter_records(path):
            rec = pb.Record()
            rec.ParseFromString(raw)
            records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            if not any(r.WhichOneof("record_type") == "exit" for r in records):
                raise TimeoutError(f"{run_file(path)}: the run has not finished writing (no exit record)")
            return records
        time.sleep(0.2)


def read_history(path: str | Path, wait_s: float = 30.0) -> list[dict]:
    """Every `run.log(...)` row, values decoded from JSON."""
    return [{_item_key(i): json.loads(i.value_json) for i in rec.history.item}
            for rec in _records(path, wait_s) if rec.WhichOneof("record_type") == "history"]


def _updates(path: str | Path, wait_s: float, field: str) -> dict:
    """``field`` (config | summary) as written: its own records' updates and the run record's, later ones win."""
    out: dict = {}
    for rec in _records(path, wait_s):
        kind = rec.WhichOneof("record_type")
        items = getattr(rec, field).update if kind == field else getattr(rec.run, field).update if kind == "run" else []
        for item in items:
            out[_item_key(item)] = json.loads(item.value_json)
    return out


def read_config(path: str | Path, wait_s: float = 30.0) -> dict:
    return _updates(path, wait_s, "config")


def read_run(path: str | Path, wait_s: float = 30.0) -> dict:
    """The run's identity as W&B records it: id, project, entity, group, job_type, name, tags."""
    for rec in _records(path, wait_s):
        if rec.WhichOneof("record_type") == "run":
            r = rec.run
            return {"id": r.run_id, "project": r.project, "entity": r.entity, "group": r.run_group,
                    "job_type": r.job_type, "name": r.display_name, "tags": list(r.tags)}
    raise ValueError(f"{run_file(path)}: no run record")


def read_summary(path: str | Path, wait_s: float = 30.0) -> dict:
    """``wandb.run.summary`` as written (explicit summary updates; later updates win)."""
    return _updates(path, wait_s, "summary")


def read_artifacts(path: str | Path, wait_s: float = 30.0) -> list[dict]:
    """Artifacts the run logged: name, type, aliases, files in the manifest."""
    out = []
    for rec in _records(path, wait_s):
        if rec.WhichOneof("record_type") == "artifact":
            a = rec.artifact
            out.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                        "files": [e.path for e in a.manifest.contents]})
    return out


def run_files(root: str | Path) -> list[Path]:
    """Every offline run file under ``root`` (e.g. a sweep directory: its jobs' runs and its table run)."""
    return sorted(Path(root).rglob("run-*.wandb"))


def describe(path: str | Path, wait_s: float = 30.0) -> dict:
    """What one offline run holds, for reading it back by eye: identity, last history row, summary, artifacts."""
    rows = read_history(path, wait_s)
    return {"file": str(run_file(path)), **read_run(path, wait_s), "history_rows": len(rows),
            "last_row": rows[-1] if rows else None, "summary": read_summary(path, wait_s),
            "artifacts": read_artifacts(path, wait_s)}


if __name__ == "__main__":
    # a run directory / run file: its description; a sweep directory: every run in it
    target = Path(sys.argv[1])
    files = run_files(target) if target.is_dir() else [target]
    out = [describe(f) for f in files]
    print(json.dumps(out[0] if len(out) == 1 else out, indent=2, default=str))
