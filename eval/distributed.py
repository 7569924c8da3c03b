"""An evaluation sharded over DDP ranks: each rank scores a disjoint stride of the test set, rank 0 merges and writes.

Rank r scores the videos r, r + world, … of the ones still to do (``eval.samples.samples_of``), with no padding,
so every video is scored exactly once over the ranks. ``gather_on_rank0`` collects the scored videos on rank 0 in
test-set order and merges the dataset metrics' running states there with each metric's ``merge_state`` (FID:
torchmetrics' own reduction of its states, ``Metric.merge_state``); only rank 0 computes the aggregate.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eval.results import ResultFiles
    from eval.suite import Suite


def distributed() -> tuple[int, int]:
    """(rank, world size) of an initialised ``torch.distributed`` process group (DDP), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any, world: int) -> list:
    """Every rank's ``obj`` (a picklable object), in rank order, on every rank."""
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather_on_rank0(pending: list[tuple], files: "ResultFiles", done: list[str], suite: "Suite", grid_rows: list,
                    n_grid: int, rank: int, world: int) -> None:
    """Collect every rank's scored videos (``pending``: (video id, per-frame values, frame indices, grid row,
    non-finite frames)) on rank 0 and write them in test-set order (rank r scored the videos r, r + world, …, so
    video k is ``gathered[k % world][k // world]``); merge the other ranks' dataset-metric states into rank 0's
    metrics. A video id seen twice is an error."""
    gathered = all_gather(pending, world)
    notes = all_gather({"skipped": dict(files.skipped), "upscaled": list(files.upscaled)}, world)
    states = all_gather({m.name: m.state_dict() for m in suite.dataset_metrics}, world)
    if rank != 0:
        return
    total = sum(len(g) for g in gathered)
    ordered = [gathered[k % world][k // world] for k in range(total)]
    ids = [v for v, *_ in ordered]
    if len(set(ids)) != len(ids) or set(ids) & set(done):
        raise RuntimeError("DDP evaluation: a video was scored twice (ranks' shards overlap)")
    for note in notes:
        files.skipped.update(note["skipped"])
        files.upscaled.extend(v for v in note["upscaled"] if v not in files.upscaled)
    for vid, per_frame, frame_idx, row, n_bad in ordered:
        if n_bad:
            files.nonfinite[vid] = int(n_bad)
        files.append(vid, per_frame, frame_idx, nonfinite_frames=n_bad)
        done.append(vid)
        if row is not None and len(grid_rows) < n_grid:
            grid_rows.append(row)
    for m in suite.dataset_metrics:
        for other in states[1:]:
            m.merge_state(other[m.name])
    files.save_state(done, suite)
