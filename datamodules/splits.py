"""Identity-disjoint train / val / test splits, deterministic in (identities, split_seed).

Identities are ranked by ``sha256(f"{split_seed}:{identity}")``; the first ``n_test`` go to test, the next
``n_val`` to val, the rest to train, with ``n = round(fraction * N)`` (at least 1 when the fraction is > 0 and
there are identities to spare). With FOMM's ``train/`` / ``test/`` folders the folders are respected: test =
the ``test/`` folder, and val is carved (by the same hash ranking) from the train identities.
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from typing import Iterable

from datamodules.layouts import ClipRecord

log = logging.getLogger("portraitlab.data")
SPLITS = ("train", "val", "test")


def identity_rank_key(identity: str, split_seed: int) -> str:
    return hashlib.sha256(f"{split_seed}:{identity}".encode()).hexdigest()


def _count(fraction: float, n: int, spare: int) -> int:
    """round(fraction * n), at least 1 when fraction > 0 and ``spare`` identities would remain for training."""
    if fraction <= 0 or n == 0:
        return 0
    k = int(round(fraction * n))
    return max(1, k) if spare > 1 else k


def assign_identities(identities: Iterable[str], val_fraction: float, test_fraction: float, split_seed: int,
                      fixed_test: Iterable[str] = ()) -> dict[str, str]:
    """identity → split. ``fixed_test`` (FOMM's test folder) go to test; the rest are ranked by hash."""
    fixed = set(fixed_test)
    ids = sorted(set(identities) - fixed)
    ranked = sorted(ids, key=lambda i: identity_rank_key(i, split_seed))
    n = len(ranked)
    n_test = 0 if fixed else _count(test_fraction, n, n)
    n_val = _count(val_fraction, n, n - n_test)
    if n_test + n_val >= n and n > 0:  # always leave at least one training identity
        n_val = max(0, n - n_test - 1)
    out = {i: "test" for i in fixed}
    for k, ident in enumerate(ranked):
        out[ident] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def split_records(records: list[ClipRecord], val_fraction: float = 0.1, test_fraction: float = 0.1,
                  split_seed: int = 0) -> dict[str, list[ClipRecord]]:
    """Split clips by identity. Records with ``split_hint`` (FOMM folders) keep their train/test folder."""
    hinted = any(r.split_hint for r in records)
    if hinted:
        test_ids = {r.identity for r in records if r.split_hint == "test"}
        train_ids = {r.identity for r in records if r.split_hint != "test"}
        both = test_ids & train_ids
        if both:
            log.warning("FOMM folders share %d identities between train/ and test/ (e.g. %s): the folders are "
                        "respected, so these splits are not identity-disjoint", len(both), sorted(both)[:3])
        if not test_ids:  # only train/: carve test too
            mapping = assign_identities(train_ids, val_fraction, test_fraction, split_seed)
        else:
            mapping = assign_identities(train_ids - test_ids, val_fraction, 0.0, split_seed)
            mapping.update({i: "test" for i in test_ids})
        out: dict[str, list[ClipRecord]] = defaultdict(list)
        for r in records:
            split = "test" if r.split_hint == "test" else mapping[r.identity]
            if r.split_hint == "train" and split == "test":  # identity in both folders: keep the train clip
                split = "train"
            out[split].append(r)
    else:
        mapping = assign_identities((r.identity for r in records), val_fraction, test_fraction, split_seed)
        out = defaultdict(list)
        for r in records:
            out[mapping[r.identity]].append(r)
    return {s: sorted(out.get(s, []), key=lambda r: r.clip_id) for s in SPLITS}
