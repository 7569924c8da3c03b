"""Cross-identity test pairs (source appearance s, driving motion d, optional ground truth x_{s←d}).

* ``load_pairs(csv, records, root)`` reads FOMM-style ``source,driving`` CSVs (SynthFaces adds ``target``: its
  cross-identity render). Entries are matched to records by clip id, relative path, file name or stem; a
  ``target`` that is no record (e.g. ``cross/<name>.mp4``) becomes an ad-hoc record resolved against the root or
  the CSV's folder.
* ``generate_pairs(records, n, seed)`` draws ``n`` pairs deterministically (source and driving of different
  identities; rng = ``numpy.random.default_rng(seed)``) and ``save_pairs`` writes them atomically.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.layouts import ClipRecord, _crop_sidecar
from datamodules.utils import atomic_write_text


@dataclass
class Pair:
    source: ClipRecord
    driving: ClipRecord
    target: Optional[ClipRecord] = None


def _keys(r: ClipRecord, root: Optional[Path]) -> list[str]:
    p = Path(r.path)
    keys = [r.clip_id, p.name, r.stem]
    if root is not None:
        try:
            keys.append(p.relative_to(root).as_posix())
        except ValueError:
            pass
    return keys


def _lookup(records: list[ClipRecord], root: Optional[Path]) -> dict[str, ClipRecord]:
    table: dict[str, ClipRecord] = {}
    for r in records:
        for k in _keys(r, root):
            table.setdefault(k, r)
    return table


def _adhoc_record(name: str, bases: list[Path], root: Optional[Path]) -> Optional[ClipRecord]:
    for base in bases:
        p = Path(name) if Path(name).is_absolute() else base / name
        if p.exists():
            rec = ClipRecord(path=str(p), identity="?", video="?", clip_id=Path(name).with_suffix("").as_posix(),
                             kind="frames" if p.is_dir() else "video", crop=_crop_sidecar(p))
            meta = (root or base) / "meta" / f"{rec.stem}.npz"
            rec.meta = str(meta) if meta.exists() else None
            return rec
    return None


def load_pairs(csv_path: str | os.PathLike, records: list[ClipRecord], root: Optional[str | os.PathLike] = None,
               strict: bool = True) -> list[Pair]:
    """Pairs of ``records`` named by a ``source,driving[,target]`` CSV (unknown names raise when ``strict``)."""
    csv_path = Path(csv_path)
    root_p = Path(root) if root is not None else None
    table = _lookup(records, root_p)
    bases = [b for b in (root_p, csv_path.parent, csv_path.parent.parent) if b is not None]
    pairs, unknown = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            src, drv = table.get(row.get("source", "")), table.get(row.get("driving", ""))
            if src is None or drv is None:
                unknown.append(row.get("source") if src is None else row.get("driving"))
                continue
            tgt = None
            if row.get("target"):
                tgt = table.get(row["target"]) or _adhoc_record(row["target"], bases, root_p)
                if tgt is None:
                    unknown.append(row["target"])
                    continue
            pairs.append(Pair(src, drv, tgt))
    if unknown and strict:
        raise KeyError(f"{csv_path}: {len(unknown)} entries name no clip of this split, e.g. {unknown[:3]}")
    return pairs


def generate_pairs(records: list[ClipRecord], n: int, seed: int = 0) -> list[Pair]:
    """``n`` deterministic cross-identity pairs; needs at least two identities."""
    recs = sorted(records, key=lambda r: r.clip_id)
    ids = sorted({r.identity for r in recs})
    if len(ids) < 2:
        raise ValueError(f"cross-identity pairs need two identities, the split has {len(ids)}")
    rng = np.random.default_rng([seed, 7919])
    out = []
    for _ in range(n):
        s = recs[int(rng.integers(len(recs)))]
        others = [r for r in recs if r.identity != s.identity]
        d = others[int(rng.integers(len(others)))]
        out.append(Pair(s, d))
    return out


def pairs_to_csv(pairs: list[Pair]) -> str:
    buf = io.StringIO()
    has_target = any(p.target is not None for p in pairs)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["source", "driving", "target"] if has_target else ["source", "driving"])
    for p in pairs:
        row = [p.source.clip_id, p.driving.clip_id]
        if has_target:
            row.append(p.target.clip_id if p.target else "")
        w.writerow(row)
    return buf.getvalue()


def save_pairs(pairs: list[Pair], path: str | os.PathLike) -> Path:
    """Write the pairs as a ``source,driving`` CSV of clip ids (atomically)."""
    return atomic_write_text(path, pairs_to_csv(pairs))
