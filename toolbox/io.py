"""Atomic file writes: temporary file in the same folder (same filesystem), fsync, then rename."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write_bytes_with(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash or a full disk leaves `path` as it was (never truncated) and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes_with(path, lambda f: f.write(text), mode="w")


def _finite_json(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats become None (count them before writing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, data: Any, *, strict: bool = False) -> Path:
    """Write JSON atomically. `strict=True` writes non-finite floats as null (valid JSON) instead of NaN/Infinity."""
    if strict:
        data = _finite_json(data)
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str,
                                              allow_nan=not strict) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints, weights)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
