"""Stream a protocol's test set through ``model.animate(source, driving)`` and score it.

``run_evaluation(model, datamodule, protocol_cfg, run_dir)`` tells one story:

1. ``prepare`` — check the protocol, build its metric suite, read the data set and name what produces the results
   (protocol hash, model identity, data fingerprint: ``eval.identity``);
2. ``restore`` — the videos an interrupted run finished and the dataset metrics' running state (``eval_state.pt``,
   ``eval.results.ResultFiles``), and cached FID reference statistics;
3. a loop of ``score_video`` over the videos still to do — the model animates a batch at its own resolution
   (``eval.resize.animate_at_model_resolution``), every metric reads the same frames at the protocol's resolution,
   and each finished video is appended to ``per_frame.csv`` / ``per_video.csv`` with the state saved after it;
4. ``aggregate`` — per-frame metrics as the NaN-aware mean over all frames, dataset metrics (FID, FVD) over all
   frames, the model's own statistics (``latent_stats()``, e.g. InterAnimate's mean |cos| between learned latents);
5. ``write_metrics`` — ``metrics.json`` (atomically: ``{"protocol", "protocol_hash", "metrics", "overrides",
   "ckpt", "model", "standin", ...}``), ``eval_grid.mp4`` (source | driving | generated | target of the first
   ``num_grid_videos`` videos) and the loggers.

Frames arrive at native size (``eval_dataset(native=True)``) and are cropped / resized with the protocol's ``crop``
and ``resize`` once. Non-finite outputs, undecodable clips and upscaled clips are counted and named in
``metrics.json``; samples' ``masks`` ({"hand", "face"}, the target's) reach the region metrics (``eval.regions``).
``run_dir`` is locked (``toolbox.locks.DirLock``) while it is written. Under DDP each rank scores a disjoint shard
and rank 0 merges and writes (``eval.distributed``). ``merge_extra_protocols`` adds other protocols' metrics to the
main ``metrics.json`` as ``<name>/<metric>``, so one table row carries, e.g., self-reenactment and cross-identity
numbers of the same checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from eval.distributed import broadcast, distributed, gather_on_rank0
from eval.fid import reference_cache_path
from eval.identity import _model_identity, data_fingerprint, model_identity
from eval.metrics import FrameBatch, nanmean
from eval.protocol import protocol_hash, verify_protocol
from eval.resize import (RESIZE_METHODS, animate_at_model_resolution, local_control_landmarks, model_resolution,
                         official_patch_centres, resize_frames, resize_video, scale_points, uses_landmarks)
from eval.results import (GRID, METRICS, PER_FRAME, PER_VIDEO, STATE, ResultFiles, merge_extra_protocols,
                          merge_model_diagnostics)
from eval.samples import batches, eval_dataset, eval_samples, frame_indices, samples_of
from eval.suite import Suite, build_suite
from toolbox.io import atomic_write_json
from toolbox.locks import DirLock
from toolbox.progress import Progress

log = logging.getLogger("portraitlab.eval")

_eval_dataset = eval_dataset   # the name eval.reuse and eval.preflight import
__all__ = ["GRID", "METRICS", "PER_FRAME", "PER_VIDEO", "RESIZE_METHODS", "STATE", "Evaluation", "ResultFiles",
           "_eval_dataset", "_model_identity", "aggregate", "animate_at_model_resolution", "clip_generator",
           "data_fingerprint", "distributed", "eval_samples", "local_control_landmarks", "merge_extra_protocols",
           "merge_model_diagnostics", "model_device", "model_identity", "model_resolution",
           "official_patch_centres", "prepare", "resize_frames", "restore", "run_evaluation", "run_settings",
           "score_video", "uses_landmarks", "write_metrics"]


# ---- run-time settings ------------------------------------------------------------------------------------------
def model_device(model) -> torch.device:
    """The device of the model's parameters (CPU for a parameter-free model)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def run_settings(model, device, seed: int = 0, precision: str = "auto", preprocess: str = "none") -> dict:
    """The run-time choices besides model, protocol and data that change a score, as ``metrics.json`` records them
    under ``run_settings`` (``eval.reuse`` reuses an evaluation only when they agree too): the per-clip generators'
    ``seed``, the resolved sampling ``precision``, where local-control landmarks come from (``fan`` with the
    official preprocessing, ``dlib``, or None for models without local control) and the device type."""
    from lit_models.base import resolve_precision

    device = torch.device(device) if device is not None else model_device(model)
    if preprocess not in ("auto", "official", "none"):
        raise ValueError(f"preprocess must be auto | official | none, got {preprocess!r}")
    official = getattr(model, "official_preprocess", None) is not None and preprocess in ("auto", "official")
    return {"seed": int(seed), "precision": resolve_precision(precision, device, model),
            "local_landmarks": None if not uses_landmarks(model) else ("fan" if official else "dlib"),
            "device_type": device.type}


def clip_generator(seed: int, video_ids: list[str]) -> torch.Generator:
    """One generator per animated batch, seeded once from (seed, the videos' ids): the same sample whatever the
    order, sharding or resumption of the evaluation."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32("|".join(video_ids).encode())) % 2**63)


# ---- the evaluation's context -----------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """One protocol's evaluation of one model into ``run_dir``: what ``prepare`` resolved and what the later steps
    fill in (finished videos, FID reference-cache paths, grid rows, a DDP rank's scored videos)."""

    model: Any
    datamodule: Any
    protocol: Any                   # DictConfig
    run_dir: Path
    suite: Suite
    files: ResultFiles
    ds: Any                         # the protocol's test set
    device: torch.device
    settings: dict                  # run_settings
    facts: dict                     # verify_protocol's facts, recorded in metrics.json
    phash: str
    model_id: str
    data_id: str
    detect: Any = None              # FAN detector for X-Portrait's official patch centres
    keypoint_locator: Any = None
    seed: int = 0
    rank: int = 0
    world: int = 1
    done: list[str] = field(default_factory=list)
    ref_paths: dict[str, Path] = field(default_factory=dict)
    grid_rows: list[np.ndarray] = field(default_factory=list)
    rows_made: int = 0              # grid rows produced by this rank so far
    pending: list[tuple] = field(default_factory=list)   # DDP: this rank's scored videos, gathered on rank 0

    @property
    def names(self) -> list[str]:
        return self.files.names

    @property
    def size(self) -> int:
        return int(self.protocol.resolution)

    @property
    def method(self) -> str:
        return str(self.protocol.resize)

    @property
    def model_res(self) -> Optional[int]:
        return self.protocol.get("model_resolution") or model_resolution(self.model)

    @property
    def n_grid(self) -> int:
        return int(self.protocol.get("num_grid_videos", 4))

    @property
    def cross(self) -> bool:
        return str(self.protocol.mode) != "self"


class ScoredVideo(NamedTuple):
    video_id: str
    per_frame: dict[str, np.ndarray]   # metric -> value per generated frame (NaN: not scored)
    frame_idx: list[int]
    grid_row: Optional[np.ndarray]
    nonfinite: int                     # generated frames with a non-finite value


def prepare(model, datamodule, protocol_cfg, run_dir: Path, device=None, dataset_key: Optional[str] = None,
            keypoint_locator=None, suite: Optional[Suite] = None, seed: int = 0, precision: str = "auto",
            preprocess: str = "none") -> Evaluation:
    """Check the protocol and everything a run needs before any video is animated (FAN's weights, metrics the mode
    cannot define, DDP limits), build the suite and name what produces the results."""
    protocol = protocol_cfg if OmegaConf.is_config(protocol_cfg) else OmegaConf.create(protocol_cfg)
    facts = verify_protocol(protocol)
    phash = protocol_hash(protocol)
    device = torch.device(device) if device is not None else model_device(model)
    settings = run_settings(model, device, seed, precision, preprocess)
    detect = None
    if settings["local_landmarks"] == "fan":       # FAN's weights: fail here, before any video
        from datamodules.preprocess.xportrait import fan_detector

        detect = fan_detector("cuda" if device.type == "cuda" else "cpu")
    suite = suite or build_suite(protocol, device=device)
    if protocol.mode == "cross":
        full_ref = [m.name for m in suite.frame_metrics if getattr(m, "needs_target", False)]
        if full_ref:
            raise ValueError(f"protocol {protocol.name}: mode=cross has no ground truth, so {full_ref} are undefined; "
                             "use no-reference metrics (fid, id, akd, mkr) or mode=synth_cross")
    ds = eval_dataset(datamodule, protocol)
    model_id, data_id = model_identity(model), data_fingerprint(ds, dataset_key)
    files = ResultFiles(run_dir, phash, [m.name for m in suite.frame_metrics], model_id=model_id, data_id=data_id)
    rank, world = distributed()
    if world > 1 and any(int(getattr(m, "num_samples", 0) or 0) > 0 for m in suite.dataset_metrics):
        raise ValueError(f"protocol {protocol.name}: fid_num_samples > 0 takes the first N frames in test-set order, "
                         "which a sharded (DDP) evaluation does not have; use fid_num_samples=0 or evaluate in one process")
    return Evaluation(model, datamodule, protocol, run_dir, suite, files, ds, device, settings, facts, phash,
                      model_id, data_id, detect=detect, keypoint_locator=keypoint_locator, seed=seed,
                      rank=rank, world=world)


def restore(ev: Evaluation, dataset_key: Optional[str] = None) -> None:
    """The finished videos and dataset-metric state of an interrupted run with the same protocol, model and data
    (rank 0 reads them; under DDP every rank skips the finished and skipped videos, and the other ranks' dataset
    states start empty and are merged later), and FID reference statistics from the cache when this dataset +
    protocol was evaluated before."""
    done, state = ev.files.load_done() if ev.rank == 0 else ([], None)
    if ev.world > 1:
        done, ev.files.skipped = broadcast((done, dict(ev.files.skipped)))
    ev.done = done
    if state is not None:
        for m in ev.suite.dataset_metrics:
            if m.name in state.get("dataset_metrics", {}):
                m.load_state_dict(state["dataset_metrics"][m.name])
    if not (ev.protocol.get("use_fid_reference_cache", True) and ev.suite.dataset_metrics):
        return
    key = dataset_key or ev.data_id
    for m in ev.suite.dataset_metrics:
        if not hasattr(m, "load_reference"):
            continue
        ev.ref_paths[m.name] = reference_cache_path(ev.phash, key, m.name + "_" + m.backend)
        if ev.rank == 0 and not done and not m.reference_loaded and m.load_reference(ev.ref_paths[m.name]):
            log.info("%s: reference statistics from %s", m.name, ev.ref_paths[m.name])
        if ev.world > 1:   # the reference is added once (rank 0); no rank adds real frames on top of it
            m.reference_loaded = broadcast(m.reference_loaded)


# ---- scoring ----------------------------------------------------------------------------------------------------
def decodable(ev: Evaluation, stream: Iterable[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """The samples that decoded; the others are skipped, counted and named in metrics.json."""
    for vid, sample in stream:
        if "_error" in sample:
            log.warning("eval %s: skipping video %s (%s)", ev.protocol.name, vid, sample["_error"])
            ev.files.skipped[vid] = str(sample["_error"])
            if ev.world == 1:   # (DDP: rank 0 merges every rank's skipped videos at the end)
                ev.files.save_state(ev.done, ev.suite)
            continue
        yield vid, sample


def score_batch(ev: Evaluation, batch: list[tuple[str, dict]]) -> Iterator[ScoredVideo]:
    """Animate a batch of equally shaped videos in one call (``animate_at_model_resolution``) and score each."""
    source = torch.stack([s["source"] for _, s in batch]).to(ev.device)
    driving = torch.stack([s["driving"] for _, s in batch]).to(ev.device)
    src_p, drv_p, pred = animate_at_model_resolution(
        ev.model, source, driving, ev.size, ev.method, ev.model_res,
        generator=clip_generator(ev.seed, [vid for vid, _ in batch]), precision=ev.settings["precision"],
        detect=ev.detect, cross=ev.cross)
    for b, (vid, sample) in enumerate(batch):
        yield score_video(ev, vid, sample, src_p[b], drv_p[b], pred[b])


def score_video(ev: Evaluation, vid: str, sample: dict, source: torch.Tensor, driving: torch.Tensor,
                pred: torch.Tensor) -> ScoredVideo:
    """Every metric of one video: ``source`` 3×s×s, ``driving`` / ``pred`` T×3×s×s at the protocol's resolution s.
    Frames with non-finite values are not scored (NaN rows, counted); self-reenactment does not score frame 0
    (the source) unless the protocol says ``include_source_frame``."""
    T = pred.shape[0]
    h, w = sample["driving"].shape[-2:]
    if (min(h, w) < ev.size or min(sample["source"].shape[-2:]) < ev.size) and vid not in ev.files.upscaled:
        ev.files.upscaled.append(vid)
    t0 = 1 if ev.protocol.mode == "self" and not ev.protocol.get("include_source_frame", False) and T > 1 else 0
    p = pred[t0:]
    finite = torch.isfinite(p).flatten(1).all(1).cpu()
    n_bad = int((~finite).sum())
    if n_bad:
        ev.files.nonfinite[vid] = n_bad
        log.warning("eval %s: video %s: %d of %d generated frames have non-finite values (not scored; counted in "
                    "nonfinite_frames)", ev.protocol.name, vid, n_bad, len(finite))
    keep = finite.nonzero().flatten()
    fb = _frame_batch(ev, vid, sample, source, driving[t0:], p, t0, keep)
    per_frame = {n: np.full(len(finite), np.nan) for n in ev.names}
    if len(keep):
        for n, vals in ev.suite.evaluate(fb).items():
            per_frame[n][keep.numpy()] = vals
    row = None
    if ev.rows_made < ev.n_grid and len(keep):
        from lit_models.common.visual import grid_frames

        row = grid_frames(fb.source[None], fb.driving[None], fb.pred[None],
                          None if fb.target is None else fb.target[None], max_frames=16)
    return ScoredVideo(vid, per_frame, frame_indices(sample, T)[t0:], row, n_bad)


def _frame_batch(ev: Evaluation, vid: str, sample: dict, source: torch.Tensor, driving: torch.Tensor,
                 pred: torch.Tensor, t0: int, keep: torch.Tensor) -> FrameBatch:
    """The scored frames ``keep`` (of frames t0…) as every metric reads them: target, masks and keypoints taken from
    native size to the protocol's resolution."""
    size, device = ev.size, ev.device
    h, w = sample["driving"].shape[-2:]
    masks = sample.get("masks")
    if isinstance(masks, dict):
        masks = {k: resize_frames((v[:, None] if v.dim() == 3 else v)[t0:].float().to(device), size,
                                  "bilinear")[keep.to(device)] for k, v in masks.items() if k in ("hand", "face")}
    else:
        masks = None
    target, kp = sample.get("target"), sample.get("keypoints")   # no target: real cross-identity pairs
    tgt = None if target is None else resize_video(target[t0:].to(device), size, ev.method)
    fb = FrameBatch(pred=pred[keep.to(pred.device)], target=None if tgt is None else tgt[keep.to(tgt.device)],
                    source=source, driving=driving[keep.to(driving.device)],
                    keypoints=None if kp is None else scale_points(kp[t0:], h, w, size)[keep],
                    pred_keypoints=None, video_id=vid, masks=masks, frame_index=keep.tolist())
    if ev.keypoint_locator is not None:
        fb.pred_keypoints = ev.keypoint_locator(fb.pred)
    return fb


def record(ev: Evaluation, scored: ScoredVideo) -> None:
    """A finished video: appended to the result files with the state saved after it (under DDP: kept for rank 0)."""
    if ev.world > 1:
        ev.pending.append(tuple(scored))
    else:
        ev.files.append(scored.video_id, scored.per_frame, scored.frame_idx, nonfinite_frames=scored.nonfinite)
        ev.done.append(scored.video_id)
        ev.files.save_state(ev.done, ev.suite)
        if scored.grid_row is not None:
            ev.grid_rows.append(scored.grid_row)
    ev.rows_made += scored.grid_row is not None


@contextlib.contextmanager
def _eval_mode(model):
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


# ---- aggregate and write ----------------------------------------------------------------------------------------
def aggregate(ev: Evaluation) -> dict:
    """Per-frame metrics as the mean over all frames (NaN = undefined frames skipped), dataset metrics over all
    frames (the reference statistics cached when they were computed here), the model's own statistics. Returns
    ``metrics`` and the counts and facts ``write_metrics`` records beside them."""
    import pandas as pd

    if not ev.done:
        raise RuntimeError(f"protocol {ev.protocol.name}: the test set yielded no videos"
                           + (f" ({len(ev.files.skipped)} could not be decoded: {ev.files.skipped})"
                              if ev.files.skipped else ""))
    frames = pd.read_csv(ev.run_dir / PER_FRAME)
    metrics: dict[str, float] = {n: nanmean(frames[n].to_numpy()) for n in ev.names}
    for m in ev.suite.dataset_metrics:
        metrics[m.name] = m.compute()
        if m.name in ev.ref_paths and not m.reference_loaded:
            m.save_reference(ev.ref_paths[m.name])
    model_stats = _model_stats(ev.model)
    metrics.update(model_stats)
    return {"metrics": metrics, "num_frames": int(len(frames)), "model_stats": sorted(model_stats),
            "dataset_metric_facts": {m.name: m.facts for m in ev.suite.dataset_metrics if hasattr(m, "facts")}}


def write_metrics(ev: Evaluation, agg: dict, ckpt: Optional[str] = None, overrides: Optional[list[str]] = None,
                  loggers=None, log_step: int = 0) -> dict:
    """``metrics.json`` (atomically), the grid video, and the loggers at ``log_step``; returns the json content."""
    from lit_models.base import model_dtype

    model, protocol, files, metrics = ev.model, ev.protocol, ev.files, agg["metrics"]
    grid = _write_grid(ev.run_dir / GRID, ev.grid_rows)
    nonfinite_metrics = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    result = {
        "protocol": str(protocol.name), "protocol_hash": ev.phash, "metrics": metrics,
        "overrides": list(overrides or []), "ckpt": ckpt, "model": _model_name(model),
        "weights": getattr(model, "loaded_weights", None),   # ema / raw (lit_models.registry.load_model)
        "model_resolution": ev.model_res, "resolution": ev.size, "model_id": ev.model_id,
        "data_fingerprint": ev.data_id, "device": str(ev.device), "dtype": model_dtype(model),
        "precision": ev.settings["precision"], "local_landmarks": ev.settings["local_landmarks"],
        "run_settings": ev.settings,
        "cross_identity_animate": (model.cross_identity_animate_kwargs() if ev.cross
                                   and hasattr(model, "cross_identity_animate_kwargs") else None),
        "standin": ev.suite.standin, "num_videos": len(ev.done), "num_frames": agg["num_frames"],
        "nonfinite_frames": int(sum(files.nonfinite.values())), "nonfinite_videos": len(files.nonfinite),
        "upscaled_videos": len(files.upscaled), "skipped_videos": len(files.skipped),
        "skipped": dict(files.skipped), "upscaled": list(files.upscaled),
        "protocol_config": OmegaConf.to_container(protocol, resolve=True), **ev.facts, **ev.suite.facts,
    }
    if nonfinite_metrics:   # JSON has no NaN / Infinity: written as null, named here
        result["undefined_metrics"] = nonfinite_metrics
    if agg["model_stats"]:
        result["model_stats"] = agg["model_stats"]
    if agg["dataset_metric_facts"]:   # e.g. FVD: clips per side, videos too short for a clip
        result["dataset_metric_facts"] = agg["dataset_metric_facts"]
    atomic_write_json(ev.run_dir / METRICS, result, strict=True)
    _log_results(loggers, str(protocol.name), metrics, ev.run_dir, grid, step=log_step)
    return result


def _write_grid(path: Path, rows: list[np.ndarray]) -> Optional[Path]:
    """The grid rows stacked into one video (rows padded to the widest); None without rows."""
    if not rows:
        return None
    from lit_models.common.visual import write_video

    T = min(g.shape[0] for g in rows)
    W = max(g.shape[2] for g in rows)
    strip = np.concatenate([np.pad(g[:T], ((0, 0), (0, 0), (0, W - g.shape[2]), (0, 0))) for g in rows], axis=1)
    try:
        write_video(strip, path)
    except Exception as err:  # noqa: BLE001 - encoding is a convenience; the numbers are what matter
        log.warning("could not write %s: %s", path, err)
    return path


def _log_results(loggers, protocol_name: str, metrics: dict, run_dir: Path, grid: Optional[Path], step: int = 0) -> None:
    """Mirror one protocol's results to the loggers at ``step`` (``eval.dashboard.log_eval_results``)."""
    from eval.dashboard import log_eval_results

    log_eval_results(loggers, protocol_name, metrics, run_dir / PER_VIDEO, grid, step=step)


def _model_name(model) -> str:
    cfg = getattr(model, "cfg", None)
    try:
        return str(cfg.name)
    except Exception:  # noqa: BLE001 - no config name: the class names the model
        return type(model).__name__


def _model_stats(model) -> dict[str, float]:
    """``model.latent_stats()`` as plain floats (absent method → {}); names must not shadow a protocol metric."""
    fn = getattr(model, "latent_stats", None)
    if not callable(fn):
        return {}
    with torch.no_grad():
        stats = fn() or {}
    return {str(k): float(v.detach().cpu().item() if torch.is_tensor(v) else v) for k, v in stats.items()}


# ---- the story --------------------------------------------------------------------------------------------------
def run_evaluation(model, datamodule, protocol_cfg, run_dir, loggers=None, ckpt: Optional[str] = None,
                   overrides: Optional[list[str]] = None, device=None, dataset_key: Optional[str] = None,
                   keypoint_locator=None, progress: bool = True, suite: Optional[Suite] = None,
                   log_step: int = 0, seed: int = 0, precision: str = "auto", preprocess: str = "none") -> dict:
    """Evaluate ``model`` under ``protocol_cfg``; returns the ``metrics.json`` content (also written to run_dir).

    Frames are read at native size, cropped and resized with the protocol's ``crop`` / ``resize`` to its
    ``resolution``; the model runs at its own resolution (``animate_at_model_resolution``) and every metric is
    computed at the protocol's. One writer: ``run_dir`` is locked (``toolbox.locks.DirLock``) while it is written.

    ``log_step``: the ``trainer/global_step`` the loggers record the results at (the checkpoint's training step).
    ``device``: where inputs go (default: the model's device; the model is not moved here). ``precision``:
    ``sampling.precision`` (auto | fp16 | bf16 | fp32); ``seed``: the per-clip generators' seed. metrics.json records
    the device, the model's dtype and the precision. ``preprocess``: official | auto (official for methods that
    define one) | none — X-Portrait's local patches from FAN landmarks as ``experiments.animate`` places them
    (its weights checked before any work), or dlib's landmarks.

    ``keypoint_locator(frames N×3×H×W) -> N×K×2`` gives the generated frames' keypoints for ``akd_gt``.
    ``dataset_key`` names the data for the FID reference-statistics cache (default: the datamodule's root).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # one writer: rank 0 writes the files (under DDP the other ranks only score their shard and hand it over)
    with DirLock(run_dir, purpose="evaluation") if distributed()[0] == 0 else contextlib.nullcontext():
        ev = prepare(model, datamodule, protocol_cfg, run_dir, device, dataset_key, keypoint_locator, suite, seed,
                     precision, preprocess)
        restore(ev, dataset_key)
        samples, total = samples_of(ev.ds, datamodule, skip=set(ev.done) | set(ev.files.skipped),
                                    shard=(ev.rank, ev.world))
        with _eval_mode(model), torch.no_grad(), Progress(
                total=total, desc=f"eval {ev.protocol.name}", unit="videos",
                initial=len(ev.done) + len(ev.files.skipped), enabled=progress and ev.rank == 0) as bar:
            for batch in batches(decodable(ev, samples), max(1, int(ev.protocol.batch_size))):
                for scored in score_batch(ev, batch):
                    record(ev, scored)
                    bar.update()
        if ev.world > 1:
            gather_on_rank0(ev.pending, ev.files, ev.done, ev.suite, ev.grid_rows, ev.n_grid, ev.rank, ev.world)
            if ev.rank != 0:   # rank 0 aggregates and writes; the others get its result
                return broadcast(None)
        result = write_metrics(ev, aggregate(ev), ckpt, overrides, loggers, log_step)
        if ev.world > 1:
            broadcast(result)
        return result
