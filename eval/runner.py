"""Stream a protocol's test set through ``model.animate(source, driving)`` and score it.

``run_evaluation(model, datamodule, protocol_cfg, run_dir)`` writes into ``run_dir``:

* ``per_frame.csv`` — one row per generated frame (video, frame index, every per-frame metric);
* ``per_video.csv`` — one row per video (means over its frames, NaN-aware, plus the frame count);
* ``metrics.json`` — ``{"protocol", "protocol_hash", "metrics", "overrides", "ckpt", "model", "standin", ...}``
  written atomically; dataset metrics (FID) over all frames, per-frame metrics as the mean over all frames;
* ``eval_grid.mp4`` — source | driving | generated | target for the first ``num_grid_videos`` videos;
* ``eval/<name>/`` — the same files for each extra protocol; ``merge_extra_protocols`` adds their metrics to the
  main ``metrics.json`` as ``<name>/<metric>`` (with each protocol's hash under ``extra_protocols``), so one table
  row carries, e.g., self-reenactment and cross-identity numbers of the same checkpoint;
* ``eval_state.pt`` — the dataset-metric state + finished videos, saved after each video so an interrupted run
  resumes without recomputing finished videos (same protocol hash required).

Model statistics: when the model has ``latent_stats() -> dict[str, float]`` (e.g. InterAnimate's mean |cos| between
learned latents), its values join ``metrics`` (so ``eval.table`` shows them as columns) and are listed under
``model_stats``. Samples' ``masks`` ({"hand", "face"}, the target's) reach the region metrics (``eval.regions``).

Each video's frames are resized once to the protocol's resolution (when they are not already at it); every metric
then reads the same tensors (and the shared views cached on ``FrameBatch``): one pass over the frames.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from eval.metrics import FrameBatch, nanmean
from eval.protocol import protocol_hash, verify_protocol
from eval.suite import Suite, build_suite

log = logging.getLogger("portraitlab.eval")

PER_FRAME, PER_VIDEO, STATE, METRICS, GRID = "per_frame.csv", "per_video.csv", "eval_state.pt", "metrics.json", "eval_grid.mp4"


# ---- data -------------------------------------------------------------------------------------------------------
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


def distributed() -> tuple[int, int]:
    """(rank, world size) of an initialised ``torch.distributed`` process group (DDP), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def eval_samples(datamodule: Any, protocol, skip: set[str], shard: tuple[int, int] = (0, 1)
                 ) -> tuple[Iterable[tuple[str, dict]], Optional[int]]:
    """(video id, sample) pairs of the protocol's test set not in ``skip``, and the set's size when known.

    ``shard=(rank, world)``: only the videos ``rank, rank + world, …`` of the ones to do (DDP: each rank scores a
    disjoint stride, no padding, so every video is scored exactly once over the ranks).

    ``datamodule``: a ``VideoClipDataModule`` (its ``eval_dataset``; decoded by a DataLoader with the data config's
    workers), anything else with ``eval_dataset``, or an iterable of samples."""
    ds = datamodule
    if hasattr(datamodule, "eval_dataset"):
        ds = datamodule.eval_dataset(split=protocol.split, mode=protocol.mode, num_frames=protocol.num_frames,
                                     stride=protocol.stride, max_videos=protocol.max_videos,
                                     pairs_csv=protocol.get("pairs_csv"))
    ids = _item_ids(ds)
    if ids is not None:
        ids = _dedup(ids)
        todo = [i for i, v in enumerate(ids) if v not in skip][shard[0]::shard[1]]
        from torch.utils.data import DataLoader, Subset

        workers = int(getattr(getattr(datamodule, "cfg", None), "num_workers", 0) or 0)
        loader = DataLoader(Subset(ds, todo), batch_size=None, shuffle=False, num_workers=min(workers, len(todo)))
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


def resize_frames(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """N×3×h×w → N×3×size×size with the protocol's resize method (no-op when already that size)."""
    if x.shape[-2:] == (size, size):
        return x
    mode, antialias = {"bilinear_antialias": ("bilinear", True), "bilinear": ("bilinear", False),
                       "bicubic_antialias": ("bicubic", True), "bicubic": ("bicubic", False),
                       "area": ("area", False), "nearest": ("nearest", False)}[method]
    kw = {"align_corners": False, "antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x.float(), size=(size, size), mode=mode, **kw).clamp(0, 1)


# ---- resumable result files -------------------------------------------------------------------------------------
class ResultFiles:
    """Per-frame / per-video CSVs appended (flushed, fsynced) as videos finish; the state file marks them done."""

    def __init__(self, run_dir: Path, phash: str, metric_names: list[str]):
        self.run_dir = run_dir
        self.phash = phash
        self.names = metric_names
        self.frame_cols = ["video_id", "frame"] + metric_names
        self.video_cols = ["video_id", "num_frames"] + [n for n in metric_names]

    def _read(self, name: str) -> list[dict]:
        path = self.run_dir / name
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def load_done(self, dataset_state_ok) -> tuple[list[str], dict | None]:
        """Finished videos (in order) and the saved dataset-metric state; files rewritten to the finished set."""
        state_path = self.run_dir / STATE
        state = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.is_file() else None
        if state is not None and state.get("protocol_hash") != self.phash:
            raise RuntimeError(f"{self.run_dir} holds an evaluation under protocol hash {state.get('protocol_hash')}, "
                               f"not {self.phash}; evaluate into a new run_dir (results of two protocols never mix)")
        if state is not None and state.get("metrics") != self.names:
            raise RuntimeError(f"{self.run_dir}: saved evaluation has metrics {state.get('metrics')}, now {self.names}")
        videos = self._read(PER_VIDEO)
        done_state = list(state["done"]) if state is not None else []
        # a video counts as done when its per-video row is written and the state saved after it
        done = [r["video_id"] for r in videos if r["video_id"] in set(done_state)] if dataset_state_ok else \
            [r["video_id"] for r in videos]
        keep = set(done)
        frames = [r for r in self._read(PER_FRAME) if r["video_id"] in keep]
        videos = [r for r in videos if r["video_id"] in keep]
        self._rewrite(PER_FRAME, self.frame_cols, frames)
        self._rewrite(PER_VIDEO, self.video_cols, videos)
        return done, state

    def _rewrite(self, name, cols, rows) -> None:
        from datamodules.utils import atomic_write_text
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.run_dir / name, buf.getvalue())

    def append(self, video_id: str, per_frame: dict[str, np.ndarray], frame_idx: list[int]) -> dict:
        row_v = {"video_id": video_id, "num_frames": len(frame_idx)}
        row_v.update({n: nanmean(per_frame[n]) for n in per_frame})
        with open(self.run_dir / PER_FRAME, "a", newline="") as f:
            w = csv.writer(f)
            for i, t in enumerate(frame_idx):
                w.writerow([video_id, t] + [f"{float(per_frame[n][i]):.8g}" for n in self.names if n in per_frame])
            f.flush()
            os.fsync(f.fileno())
        with open(self.run_dir / PER_VIDEO, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.video_cols, extrasaction="ignore").writerow(
                {k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row_v.items()})
            f.flush()
            os.fsync(f.fileno())
        return row_v

    def save_state(self, done: list[str], suite: Suite) -> None:
        path = self.run_dir / STATE
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"protocol_hash": self.phash, "metrics": self.names, "done": list(done),
                    "dataset_metrics": {m.name: m.state_dict() for m in suite.dataset_metrics}}, tmp)
        os.replace(tmp, path)


# ---- logging ----------------------------------------------------------------------------------------------------
def _log_results(loggers, protocol_name: str, metrics: dict, run_dir: Path, grid: Optional[Path]) -> None:
    for logger in loggers or []:
        try:
            logger.log_metrics({f"eval/{protocol_name}/{k}": v for k, v in metrics.items()
                                if isinstance(v, (int, float)) and math.isfinite(v)}, step=0)
            if type(logger).__name__ == "WandbLogger":
                import pandas as pd
                import wandb

                table = wandb.Table(dataframe=pd.read_csv(run_dir / PER_VIDEO))
                payload = {f"eval/{protocol_name}/per_video": table}
                if grid is not None and grid.is_file():  # from the mp4 PyAV wrote (numpy input would need moviepy)
                    payload[f"eval/{protocol_name}/grid"] = wandb.Video(str(grid), format="mp4")
                logger.experiment.log(payload)
        except Exception as err:  # a logger failure must not lose the local results (the source of truth)
            log.warning("logging eval results to %s failed: %s", type(logger).__name__, err)


# ---- the runner -------------------------------------------------------------------------------------------------
def _batches(samples: Iterable[tuple[str, dict]], batch_size: int):
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


def _frame_indices(sample: dict, T: int) -> list[int]:
    meta = sample.get("meta") or {}
    idx = meta.get("frame_indices") if isinstance(meta, dict) else None
    if idx is not None:
        idx = [int(v) for v in (idx.tolist() if hasattr(idx, "tolist") else idx)]
        if len(idx) == T:
            return idx
    return list(range(T))


def _model_name(model) -> str:
    cfg = getattr(model, "cfg", None)
    try:
        return str(cfg.name)
    except Exception:
        return type(model).__name__


def _model_stats(model) -> dict[str, float]:
    """``model.latent_stats()`` as plain floats (absent method → {}); names must not shadow a protocol metric."""
    fn = getattr(model, "latent_stats", None)
    if not callable(fn):
        return {}
    with torch.no_grad():
        stats = fn() or {}
    return {str(k): float(v.detach().cpu().item() if torch.is_tensor(v) else v) for k, v in stats.items()}


def run_evaluation(model, datamodule, protocol_cfg, run_dir, loggers=None, ckpt: Optional[str] = None,
                   overrides: Optional[list[str]] = None, device=None, dataset_key: Optional[str] = None,
                   keypoint_locator=None, progress: bool = True, suite: Optional[Suite] = None) -> dict:
    """Evaluate ``model`` under ``protocol_cfg``; returns the ``metrics.json`` content (also written to run_dir).

    ``keypoint_locator(frames N×3×H×W) -> N×K×2`` gives the generated frames' keypoints for ``akd_gt``.
    ``dataset_key`` names the data for the FID reference-statistics cache (default: the datamodule's root).
    """
    from datamodules.utils import atomic_write_json

    from omegaconf import OmegaConf

    protocol = protocol_cfg if OmegaConf.is_config(protocol_cfg) else OmegaConf.create(protocol_cfg)
    facts = verify_protocol(protocol)
    phash = protocol_hash(protocol)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if device is None:
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cpu")
    suite = suite or build_suite(protocol, device=device)
    if protocol.mode == "cross":
        full_ref = [m.name for m in suite.frame_metrics if getattr(m, "needs_target", False)]
        if full_ref:
            raise ValueError(f"protocol {protocol.name}: mode=cross has no ground truth, so {full_ref} are undefined; "
                             "use no-reference metrics (fid, id, akd, mkr) or mode=synth_cross")
    names = [m.name for m in suite.frame_metrics]
    files = ResultFiles(run_dir, phash, names)
    rank, world = distributed()
    if world > 1 and any(int(getattr(m, "num_samples", 0) or 0) > 0 for m in suite.dataset_metrics):
        raise ValueError(f"protocol {protocol.name}: fid_num_samples > 0 takes the first N frames in test-set order, "
                         "which a sharded (DDP) evaluation does not have; use fid_num_samples=0 or evaluate in one process")
    done, state = files.load_done(dataset_state_ok=True) if rank == 0 else ([], None)
    if world > 1:   # rank 0 read the finished videos (and rewrote the files); every rank skips them
        done = _broadcast(done)
    if state is not None:   # (DDP: rank 0 only — the other ranks' dataset states start empty and are summed)
        for m in suite.dataset_metrics:
            if m.name in state.get("dataset_metrics", {}):
                m.load_state_dict(state["dataset_metrics"][m.name])

    # FID reference statistics: from the cache when this dataset + protocol was evaluated before
    ref_paths = {}
    if protocol.get("use_fid_reference_cache", True) and suite.dataset_metrics:
        from eval.fid import reference_cache_path

        key = dataset_key or str(getattr(getattr(datamodule, "cfg", None), "root", None) or
                                 getattr(datamodule, "root", "") or type(datamodule).__name__)
        for m in suite.dataset_metrics:
            ref_paths[m.name] = reference_cache_path(phash, key, m.name + "_" + m.backend)
            if rank == 0 and not done and not m.reference_loaded and m.load_reference(ref_paths[m.name]):
                log.info("%s: reference statistics from %s", m.name, ref_paths[m.name])
            if world > 1:   # the reference is added once (rank 0); no rank adds real frames on top of it
                m.reference_loaded = _broadcast(m.reference_loaded)

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    size, method = int(protocol.resolution), str(protocol.resize)
    grid_rows: list[np.ndarray] = []
    n_grid = int(protocol.get("num_grid_videos", 4))
    samples, total = eval_samples(datamodule, protocol, skip=set(done), shard=(rank, world))
    pending: list[tuple[str, dict, list[int], Optional[np.ndarray]]] = []   # DDP: gathered on rank 0 at the end
    progress = progress and rank == 0

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"eval {protocol.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not progress, transient=True) as bar:
        task = bar.add_task("videos", total=total, completed=len(done))
        with torch.no_grad():
            for batch in _batches(samples, max(1, int(protocol.batch_size))):
                source = torch.stack([s["source"] for _, s in batch]).to(device)
                driving = torch.stack([s["driving"] for _, s in batch]).to(device)
                pred = model.animate(source, driving)
                if pred.shape != driving.shape:
                    raise RuntimeError(f"animate returned {tuple(pred.shape)} for driving {tuple(driving.shape)}")
                for b, (vid, sample) in enumerate(batch):
                    T = pred.shape[1]
                    target = sample.get("target")
                    if protocol.mode == "cross" and sample.get("_target_is_driving", False):
                        target = None   # real cross-identity pairs have no ground truth
                    if target is None and protocol.mode == "self":
                        target = sample["driving"]
                    kp = sample.get("keypoints")
                    # self-reenactment: frame 0 is the source, so it is not scored unless the protocol says so
                    t0 = 1 if protocol.mode == "self" and not protocol.get("include_source_frame", False) and T > 1 else 0
                    p = resize_frames(pred[b, t0:], size, method)
                    masks = sample.get("masks")
                    if isinstance(masks, dict):
                        masks = {k: resize_frames((v[:, None] if v.dim() == 3 else v)[t0:].float().to(device), size,
                                                  "bilinear") for k, v in masks.items() if k in ("hand", "face")}
                    else:
                        masks = None
                    fb = FrameBatch(
                        pred=p,
                        target=None if target is None else resize_frames(target[t0:].to(device), size, method),
                        source=resize_frames(sample["source"][None].to(device), size, method)[0],
                        driving=resize_frames(sample["driving"][t0:].to(device), size, method),
                        keypoints=None if kp is None else kp[t0:] * (size / sample["driving"].shape[-1]),
                        pred_keypoints=None if keypoint_locator is None else keypoint_locator(p),
                        video_id=vid, masks=masks)
                    per_frame = suite.evaluate(fb)
                    row = None
                    if len(grid_rows) + len([p for p in pending if p[3] is not None]) < n_grid:
                        from lit_models.common.visual import grid_frames

                        row = grid_frames(fb.source[None], fb.driving[None], fb.pred[None],
                                          None if fb.target is None else fb.target[None], max_frames=16)
                    if world > 1:
                        pending.append((vid, per_frame, _frame_indices(sample, T)[t0:], row))
                    else:
                        files.append(vid, per_frame, _frame_indices(sample, T)[t0:])
                        done.append(vid)
                        files.save_state(done, suite)
                        if row is not None:
                            grid_rows.append(row)
                    bar.advance(task)
    if was_training and hasattr(model, "train"):
        model.train()
    if world > 1:
        _gather_on_rank0(pending, files, done, suite, grid_rows, n_grid, rank, world)
        if rank != 0:   # rank 0 aggregates and writes; the others get its result
            return _broadcast(None)
    if not done:
        raise RuntimeError(f"protocol {protocol.name}: the test set yielded no videos")

    # aggregate: per-frame metrics as the mean over all frames (NaN = undefined frames skipped), dataset metrics
    import pandas as pd

    frames = pd.read_csv(run_dir / PER_FRAME)
    metrics: dict[str, float] = {n: nanmean(frames[n].to_numpy()) for n in names}
    for m in suite.dataset_metrics:
        metrics[m.name] = m.compute()
        if m.name in ref_paths and not m.reference_loaded:
            m.save_reference(ref_paths[m.name])
    model_stats = _model_stats(model)
    metrics.update(model_stats)
    grid = None
    if grid_rows:
        grid = run_dir / GRID
        from lit_models.common.visual import write_video

        T = min(g.shape[0] for g in grid_rows)
        W = max(g.shape[2] for g in grid_rows)
        strip = np.concatenate([np.pad(g[:T], ((0, 0), (0, 0), (0, W - g.shape[2]), (0, 0))) for g in grid_rows], axis=1)
        try:
            write_video(strip, grid)
        except Exception as err:  # encoding is a convenience; the numbers are what matter
            log.warning("could not write %s: %s", run_dir / GRID, err)
    result = {
        "protocol": str(protocol.name), "protocol_hash": phash, "metrics": metrics,
        "overrides": list(overrides or []), "ckpt": ckpt, "model": _model_name(model),
        "standin": suite.standin, "num_videos": len(done), "num_frames": int(len(frames)),
        "protocol_config": OmegaConf.to_container(protocol, resolve=True), **facts, **suite.facts,
    }
    if model_stats:
        result["model_stats"] = sorted(model_stats)
    atomic_write_json(run_dir / METRICS, result)
    _log_results(loggers, str(protocol.name), metrics, run_dir, grid)
    if world > 1:
        _broadcast(result)
    return result


# ---- DDP: shard the test set over the ranks, gather on rank 0 ---------------------------------------------------
def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather_on_rank0(pending, files: "ResultFiles", done: list[str], suite: Suite, grid_rows: list, n_grid: int,
                     rank: int, world: int) -> None:
    """Collect every rank's scored videos on rank 0 and write them in test-set order (rank r scored the videos
    r, r + world, …, so video k is ``gathered[k % world][k // world]``); sum the dataset metrics' running states
    (FID's feature sums / counts) over the ranks into rank 0's metric. Every video lands exactly once: the shards
    are disjoint strides with no padding, and a video id seen twice is an error."""
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, pending)
    states = [None] * world
    dist.all_gather_object(states, {m.name: m.state_dict() for m in suite.dataset_metrics})
    if rank != 0:
        return None
    total = sum(len(g) for g in gathered)
    ordered = [gathered[k % world][k // world] for k in range(total)]
    ids = [v for v, *_ in ordered]
    if len(set(ids)) != len(ids) or set(ids) & set(done):
        raise RuntimeError("DDP evaluation: a video was scored twice (ranks' shards overlap)")
    for vid, per_frame, frame_idx, row in ordered:
        files.append(vid, per_frame, frame_idx)
        done.append(vid)
        if row is not None and len(grid_rows) < n_grid:
            grid_rows.append(row)
    for m in suite.dataset_metrics:
        merged = {k: v for k, v in states[0][m.name].items()}
        for other in states[1:]:
            for k, v in other[m.name].items():
                if torch.is_tensor(v):
                    merged[k] = merged[k] + v
        m.load_state_dict(merged)
        if hasattr(getattr(m, "metric", None), "distributed_available_fn"):   # already summed: no second sync
            m.metric.distributed_available_fn = lambda: False
    files.save_state(done, suite)
    return None


def merge_extra_protocols(run_dir, extra: dict[str, dict]) -> dict:
    """Add extra protocols' results (``run_evaluation`` returns, keyed by a name) to ``run_dir/metrics.json``.

    Their metrics become ``<name>/<metric>``; ``extra_protocols[name]`` records the protocol, its hash, where its
    files are and its video / frame counts; ``standin`` is true when any protocol used a stand-in network. Tables
    only group runs whose main and extra protocol hashes all agree (``eval.table``)."""
    import json

    from datamodules.utils import atomic_write_json

    run_dir = Path(run_dir)
    main = json.loads((run_dir / METRICS).read_text())
    main.setdefault("extra_protocols", {})
    for name, res in extra.items():
        if "/" in name:
            raise ValueError(f"extra protocol name {name!r} must not contain '/'")
        main["metrics"] = {k: v for k, v in main["metrics"].items() if not k.startswith(f"{name}/")}
        main["metrics"].update({f"{name}/{k}": v for k, v in res["metrics"].items()})
        main["extra_protocols"][name] = {
            "protocol": res["protocol"], "protocol_hash": res["protocol_hash"], "dir": f"eval/{name}",
            "num_videos": res.get("num_videos"), "num_frames": res.get("num_frames"),
            "standin": bool(res.get("standin", False))}
        main["standin"] = bool(main.get("standin", False)) or bool(res.get("standin", False))
    atomic_write_json(run_dir / METRICS, main)
    return main


def merge_model_diagnostics(run_dir, diagnostics: dict[str, float], source: str) -> dict:
    """Add a model's own evaluation diagnostics (e.g. MRFA's keypoint-motion errors) to ``run_dir/metrics.json``:
    they join ``metrics`` (table columns) and are listed under ``model_diagnostics`` with where they come from."""
    import json

    from datamodules.utils import atomic_write_json

    run_dir = Path(run_dir)
    main = json.loads((run_dir / METRICS).read_text())
    clash = sorted(set(diagnostics) & set(main["metrics"]) - set(main.get("model_diagnostics", {}).get("names", [])))
    if clash:
        raise ValueError(f"model diagnostics {clash} would overwrite protocol metrics of the same name")
    main["metrics"].update({k: float(v) for k, v in diagnostics.items()})
    main["model_diagnostics"] = {"names": sorted(diagnostics), "source": source}
    atomic_write_json(run_dir / METRICS, main)
    return main
