"""The protocol's test set as a stream of ``(video id, sample)`` pairs for ``eval.runner``.

Video ids come from the samples' ``meta`` (``video_id``, else ``source_clip_id<-clip_id``), repeated ids get a
``#k`` suffix, and ids known without decoding (``EvalClipDataset.items``) let a resumed evaluation skip finished
videos before they are decoded. Under DDP each rank takes a disjoint stride of the videos still to do, without
padding, so every video is scored exactly once over the ranks.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterable, Optional

from torch.utils.data import DataLoader, Subset


def _id_from(meta: Any, index: int) -> str:
    if isinstance(meta, dict):
        if meta.get("video_id") is not None:
            return str(meta["video_id"])
        clip, src = meta.get("clip_id"), meta.get("source_clip_id")
        if clip is not None:
            return str(clip) if src in (None, "", clip) else f"{src}<-{clip}"
        for key in ("id", "video", "path"):
            if meta.get(key) is not None:
                return str(meta[key])
    return f"video{index:05d}"


def _item_ids(ds: Any) -> Optional[list[str]]:
    """Video ids known without decoding (``EvalClipDataset.items``), so finished videos are not even decoded."""
    items = getattr(ds, "items", None)
    if items is None or not hasattr(ds, "__getitem__"):
        return None
    try:
        return [_id_from({"clip_id": it.driving.clip_id, "source_clip_id": it.source.clip_id}, i)
                for i, it in enumerate(items)]
    except AttributeError:
        return None


def _dedup(ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for v in ids:
        seen[v] = seen.get(v, 0) + 1
        out.append(v if seen[v] == 1 else f"{v}#{seen[v] - 1}")
    return out


def eval_dataset(datamodule: Any, protocol):
    """The protocol's test set: native-size frames (cropped with the protocol's ``crop``) when the datamodule can
    deliver them, so that the protocol's ``resize`` is the only resize between the file and a score."""
    if not hasattr(datamodule, "eval_dataset"):
        return datamodule
    kw = dict(split=protocol.split, mode=protocol.mode, num_frames=protocol.num_frames, stride=protocol.stride,
              max_videos=protocol.max_videos, pairs_csv=protocol.get("pairs_csv"))
    params = inspect.signature(datamodule.eval_dataset).parameters
    if "native" in params:
        kw["native"] = True
        if protocol.get("crop") is not None:
            kw["crop"] = str(protocol.crop)
    return datamodule.eval_dataset(**kw)


class _Guarded:
    """Wraps an indexable dataset: a sample that fails to decode becomes ``{"_error": message}`` instead of ending
    the evaluation (the runner skips it, counts it and names it in metrics.json)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return self.ds[i]
        except Exception as err:  # noqa: BLE001 - a bad clip is reported, not fatal
            return {"_error": f"{type(err).__name__}: {err}"[:500]}


def samples_of(ds, datamodule, skip: set[str], shard: tuple[int, int] = (0, 1)
               ) -> tuple[Iterable[tuple[str, dict]], Optional[int]]:
    """(video id, sample) pairs of ``ds`` not in ``skip``, and the set's size when known. ``shard=(rank, world)``:
    only the videos ``rank, rank + world, …`` of the ones to do (DDP: each rank scores a disjoint stride, no padding,
    so every video is scored exactly once over the ranks)."""
    ids = _item_ids(ds)
    if ids is not None:
        ids = _dedup(ids)
        todo = [i for i, v in enumerate(ids) if v not in skip][shard[0]::shard[1]]
        workers = int(getattr(getattr(datamodule, "cfg", None), "num_workers", 0) or 0)
        loader = DataLoader(Subset(_Guarded(ds), todo), batch_size=None, shuffle=False,
                            num_workers=min(workers, len(todo)))
        return ((ids[i], sample) for i, sample in zip(todo, loader)), len(ids)

    def stream():
        seen: dict[str, int] = {}
        k = 0
        for i, sample in enumerate(ds):
            vid = _id_from(sample.get("meta"), i)
            seen[vid] = seen.get(vid, 0) + 1
            vid = vid if seen[vid] == 1 else f"{vid}#{seen[vid] - 1}"
            if vid not in skip:
                if k % shard[1] == shard[0]:
                    yield vid, sample
                k += 1

    try:
        total = len(ds)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return stream(), total


def eval_samples(datamodule: Any, protocol, skip: set[str], shard: tuple[int, int] = (0, 1)
                 ) -> tuple[Iterable[tuple[str, dict]], Optional[int]]:
    """(video id, sample) pairs of the protocol's test set not in ``skip``, and the set's size when known.

    ``datamodule``: a ``VideoClipDataModule`` (its ``eval_dataset`` at native size; decoded by a DataLoader with
    the data config's workers), anything else with ``eval_dataset``, or an iterable of samples. A sample that failed
    to decode is ``{"_error": message}``."""
    return samples_of(eval_dataset(datamodule, protocol), datamodule, skip, shard)


def batches(samples: Iterable[tuple[str, dict]], batch_size: int):
    """Group consecutive samples of equal shapes into batches of up to ``batch_size`` videos."""
    batch: list[tuple[str, dict]] = []
    for vid, sample in samples:
        if batch and (sample["driving"].shape != batch[0][1]["driving"].shape
                      or sample["source"].shape != batch[0][1]["source"].shape):
            yield batch
            batch = []
        batch.append((vid, sample))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def frame_indices(sample: dict, T: int) -> list[int]:
    meta = sample.get("meta") or {}
    idx = meta.get("frame_indices") if isinstance(meta, dict) else None
    if idx is not None:
        idx = [int(v) for v in (idx.tolist() if hasattr(idx, "tolist") else idx)]
        if len(idx) == T:
            return idx
    return list(range(T))
