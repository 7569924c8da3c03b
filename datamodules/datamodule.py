"""``VideoClipDataModule``: clips on disk (or litdata shards) → the batch dict of docs/DESIGN.md.

setup(): discover clips (``layouts``), skip bad files (``scan``, cached), split by identity (``splits``), log a
summary. Training draws sample ``i`` from ``(seed, i)`` (``dataset.TrainClipDataset``); the
``ResumableIndexSampler`` starts each epoch's stream where the trainer stands, so ``resume`` continues the exact
stream and DDP ranks take disjoint strides of it. Validation / test are sequential self-reenactment; the
evaluation suite streams any protocol through ``eval_dataset`` / ``eval_dataloader``.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.config import DataConfig, SynthConfig
from datamodules.dataset import (EvalClipDataset, TrainClipDataset, batch_to_float, build_cross_items,
                                 build_self_items, collate_clips)
from datamodules.layouts import ClipRecord, LocalClipSource, detect_layout
from datamodules.pairs import Pair, generate_pairs, load_pairs, save_pairs
from datamodules.scan import ScanResult, default_cache_path, scan
from datamodules.splits import SPLITS, split_records

log = logging.getLogger("portraitlab.data")
EVAL_MODES = ("self", "cross", "synth_cross")


def to_data_config(cfg: Any = None, **overrides) -> DataConfig:
    """DataConfig from a dataclass, DictConfig or dict (plus keyword overrides), validated by the schema."""
    merged = OmegaConf.structured(DataConfig)
    if OmegaConf.is_config(cfg):   # a node of a run config: resolve interpolations (`${model.resolution}`) in place
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if cfg is not None:
        merged = OmegaConf.merge(merged, cfg if isinstance(cfg, dict) else OmegaConf.structured(cfg))
    if overrides:
        merged = OmegaConf.merge(merged, overrides)
    return OmegaConf.to_object(merged)


class ResumableIndexSampler(DistributedSampler):
    """Sample indices ``start + rank + world_size·j``, j < ``length``; ``start`` is read from ``start_fn`` each time
    an epoch begins. A DistributedSampler subclass so that Lightning does not wrap it again under DDP."""

    def __init__(self, length: int, start_fn: Optional[Callable[[], int]] = None, start: int = 0, rank: int = 0,
                 world_size: int = 1):
        # no super().__init__: it needs a dataset and an initialised process group; only the attributes matter
        self.length, self.start_fn, self.start = int(length), start_fn, int(start)
        self.rank, self.num_replicas, self.epoch, self.shuffle, self.drop_last = rank, world_size, 0, False, False
        self.num_samples, self.total_size = self.length, self.length * world_size

    def current_start(self) -> int:
        return int(self.start_fn()) if self.start_fn is not None else self.start

    def __iter__(self):
        s = self.current_start()
        return iter(range(s + self.rank, s + self.rank + self.num_replicas * self.length, self.num_replicas))

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class VideoClipDataModule(L.LightningDataModule):
    """``VideoClipDataModule(cfg)`` with ``cfg`` a DataConfig / DictConfig / dict (or its fields as keywords)."""

    def __init__(self, cfg: Any = None, **kwargs):
        super().__init__()
        self.cfg: DataConfig = to_data_config(cfg, **kwargs)
        c = self.cfg
        if c.layout != "shards" and c.root in (None, "", "???"):
            raise ValueError("data.root is not set")
        self.source = None
        self.scan_result: Optional[ScanResult] = None
        self.splits: dict[str, list[ClipRecord]] = {}
        self.summary: dict = {}
        self._ready = False

    # ---- data preparation -----------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.cfg.root)

    def prepare_data(self) -> None:
        """Render SynthFaces into ``root`` when ``synth`` is set (``render_dataset`` returns at once when
        ``root/synthfaces.json`` already records the same config, and refuses a root rendered with another one;
        the default roots are keyed by ``${synth_key:...}``, so configs never share one)."""
        c = self.cfg
        if c.synth is None:
            return
        from datamodules.synthfaces import render_dataset  # imported only when SynthFaces is asked for

        synth = c.synth if isinstance(c.synth, SynthConfig) else SynthConfig(**dict(c.synth))
        if not (self.root / "synthfaces.json").exists():
            log.info("rendering SynthFaces into %s", self.root)
        render_dataset(self.root, synth)

    def _make_source(self):
        c = self.cfg
        layout = c.layout
        if layout == "auto" and c.shards:
            layout = "shards"
        if layout == "auto":
            layout = detect_layout(self.root)
        if layout == "shards":
            # Hook for cluster-scale data: datamodules.shards provides ShardClipSource with the ClipSource
            # interface (records with num_frames filled, open(record), load_meta(record), load_crop(record)).
            try:
                from datamodules.shards import ShardClipSource
            except ImportError as e:
                raise ImportError("layout=shards needs datamodules.shards.ShardClipSource "
                                  "(write shards with `python -m datamodules.prepare shards ROOT OUT`)") from e
            return ShardClipSource(c.shards or c.root, decoder=c.decoder)
        return LocalClipSource(self.root, layout=layout, decoder=c.decoder, threads=c.decoder_threads)

    def setup(self, stage: Optional[str] = None) -> None:
        if self._ready:
            return
        c = self.cfg
        if self.trainer is None:  # outside Lightning nobody called prepare_data (under a Trainer: local rank 0 did)
            self.prepare_data()
        self.source = self._make_source()
        records = list(self.source.records)
        if isinstance(self.source, LocalClipSource):
            cache = default_cache_path(self.root) if c.use_scan_cache else None
            # PyAV demux-level truncation checks, then a decode with the decoder that will read the frames
            self.scan_result = scan(records, decoder=c.decoder, min_frames=c.min_frames, cache_path=cache)
        else:  # shards were validated when written; still honour min_frames
            usable = [r for r in records if r.num_frames >= c.min_frames]
            skipped = Counter({"too_short": len(records) - len(usable)} if len(usable) < len(records) else {})
            self.scan_result = ScanResult(usable=usable, skipped=skipped)
        self.source.records = self.scan_result.usable
        self.splits = split_records(self.scan_result.usable, c.val_fraction, c.test_fraction, c.split_seed)
        self.summary = {
            **self.scan_result.summary(),
            "splits": {s: {"clips": len(v), "identities": len({r.identity for r in v})} for s, v in self.splits.items()},
        }
        msg = (f"data {c.name} @ {c.root}: {self.summary['usable']}/{self.summary['videos']} clips usable"
               + (f" (skipped {self.summary['skipped']})" if self.summary["skipped"] else "") + "; "
               + ", ".join(f"{s} {v['clips']} clips / {v['identities']} ids" for s, v in self.summary["splits"].items()))
        log.info(msg)
        if self.trainer is None or self.trainer.is_global_zero:
            print(msg)
        self._ready = True

    # ---- training -------------------------------------------------------------------------------------------
    def stream_start(self) -> int:
        """Index of the next training sample of the global stream: batches done × batch_size × world_size.

        Batches done = the fit loop's ``batch_progress.total.processed`` (batches whose training step ran; not
        inflated by several optimizers per batch like ``global_step``). Not ``_batches_that_stepped``: a step
        checkpoint is written in ``on_train_batch_end``, before Lightning increments that counter, and Lightning
        corrects it on restore only in ``TrainingEpochLoop.reset()`` — after ``FitLoop.setup_data()`` has already
        created the data iterator (and so read this start), which made a resumed run replay one batch."""
        t = self.trainer
        if t is None:
            return 0
        try:
            done = int(t.fit_loop.epoch_loop.batch_progress.total.processed)
        except AttributeError:
            done = int(t.global_step) * int(getattr(t, "accumulate_grad_batches", 1) or 1)
        return done * self.cfg.batch_size * int(t.world_size)

    @property
    def ship_uint8(self) -> bool:
        """Loaders built for a Trainer ship uint8 and convert on the device (``on_after_batch_transfer``); by hand
        (no trainer attached) they deliver float32 like ``eval_dataset``."""
        return bool(self.cfg.transfer_uint8) and self.trainer is not None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch_to_float(batch) if isinstance(batch, dict) else batch

    def train_dataset(self, as_uint8: bool = False) -> TrainClipDataset:
        c = self.cfg
        self.setup()
        return TrainClipDataset(self.source, self.splits["train"], c.resolution, c.crop, c.num_frames, c.frame_stride,
                                seed=c.seed, length=c.steps_per_epoch * c.batch_size, as_uint8=as_uint8,
                                use_meta=c.use_meta, cross_driving=c.use_synth_cross_driving,
                                id_sampling=c.id_sampling, num_repeats=c.num_repeats, pair_sampling=c.pair_sampling,
                                augmentation=c.augmentation)

    def _loader_kwargs(self) -> dict:
        c = self.cfg
        return dict(num_workers=c.num_workers, collate_fn=collate_clips, pin_memory=False,
                    persistent_workers=False, prefetch_factor=2 if c.num_workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        c = self.cfg
        ds = self.train_dataset(as_uint8=self.ship_uint8)
        t = self.trainer
        rank, world = (int(t.global_rank), int(t.world_size)) if t is not None else (0, 1)
        sampler = ResumableIndexSampler(c.steps_per_epoch * c.batch_size, start_fn=self.stream_start, rank=rank,
                                        world_size=world)
        # its own generator: creating the loader's iterator draws a base seed, and from the global torch RNG that
        # draw would come at a different point of a resumed run (right after the RNG restore) than of an
        # uninterrupted one (epoch start), shifting every later random number (noise, augmentations)
        generator = torch.Generator().manual_seed(int(c.seed))
        return DataLoader(ds, batch_size=c.batch_size, sampler=sampler, drop_last=True, generator=generator,
                          **self._loader_kwargs())

    # ---- evaluation -----------------------------------------------------------------------------------------
    def default_pairs_path(self, split: str, n: int) -> Path:
        name = f"cross_pairs_{split}_n{n}_s{self.cfg.seed}.csv"
        return (self.root / "pairs" / name) if os.access(self.root, os.W_OK) else default_cache_path(self.root).with_name(name)

    def cross_pairs(self, split: str = "test", mode: str = "cross", pairs_csv: Optional[str] = None,
                    num_pairs: Optional[int] = None) -> list[Pair]:
        """Pairs for ``mode`` cross (CSV, or generated from ``split`` and saved) or synth_cross (SynthFaces'
        ``root/cross/pairs.csv`` with ground-truth targets)."""
        self.setup()
        c = self.cfg
        usable = self.scan_result.usable
        csv_path = pairs_csv or c.pairs_csv
        if mode == "synth_cross":
            csv_path = csv_path or str(self.root / "cross" / "pairs.csv")
            if not Path(csv_path).exists():
                raise FileNotFoundError(f"synth_cross needs {csv_path} (SynthFaces writes it with num_cross_pairs > 0)")
            return load_pairs(csv_path, usable, self.root)
        if csv_path and Path(csv_path).exists():
            return load_pairs(csv_path, usable, self.root)
        n = num_pairs or c.num_cross_pairs
        pairs = generate_pairs(self.splits[split], n, seed=c.seed)
        out = Path(csv_path) if csv_path else self.default_pairs_path(split, n)
        save_pairs(pairs, out)
        log.info("generated %d cross-identity pairs of split %s → %s", len(pairs), split, out)
        return pairs

    def eval_dataset(self, split: str = "test", mode: str = "self", num_frames: Optional[int] = None,
                     stride: Optional[int] = None, max_videos: Optional[int] = None,
                     pairs_csv: Optional[str] = None, as_uint8: bool = False, native: bool = False,
                     crop: Optional[str] = None) -> EvalClipDataset:
        """The evaluation set of a protocol, items in a fixed deterministic order.

        * ``split``: train | val | test (identity-disjoint).
        * ``mode``: ``self`` — every clip of the split (identities interleaved), source = frame 0, driving = target
          = frames 0, stride, … (``num_frames`` of them; 0 = all); ``cross`` — pairs from ``pairs_csv``
          (FOMM ``source,driving`` CSV of clip ids / file names), generated from the split and saved when absent;
          no ``target`` in the batch; ``synth_cross`` — SynthFaces pairs (default ``root/cross/pairs.csv``) with
          the ground-truth render as ``target``.
        * ``num_frames`` / ``stride`` / ``max_videos`` default to ``eval_num_frames`` / ``eval_stride`` /
          ``eval_max_videos`` of the data config (``max_videos`` 0 = all).

        Each item is one video: ``source`` 3×H×W, ``driving``/``target`` T×3×H×W, ``meta`` (clip ids, paths,
        ``frame_indices``), float32 in [0, 1] (uint8 with ``as_uint8``; ``datamodules.dataset.batch_to_float``
        converts). Use ``eval_dataloader(ds)`` to batch it (batch size 1 when the videos' T differ).
        * ``native``: frames keep their native (cropped) size instead of ``data.resolution``² — the evaluation
          applies its protocol's ``resize`` itself; ``crop`` (none | center | meta) replaces ``data.crop``.
        """
        self.setup()
        c = self.cfg
        if mode not in EVAL_MODES:
            raise ValueError(f"mode={mode!r} is not one of {', '.join(EVAL_MODES)}")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        nf = c.eval_num_frames if num_frames is None else num_frames
        st = c.eval_stride if stride is None else stride
        mv = c.eval_max_videos if max_videos is None else max_videos
        if mode == "self":
            items = build_self_items(self.splits[split], nf, st, mv)
        else:
            pairs = self.cross_pairs(split, mode, pairs_csv)
            items = build_cross_items(pairs, nf, st, mv, num_frames_of=lambda r: self.source.open(r).num_frames)
        return EvalClipDataset(self.source, items, None if native else c.resolution, crop or c.crop,
                               as_uint8=as_uint8, use_meta=c.use_meta)

    def eval_dataloader(self, dataset: EvalClipDataset, batch_size: Optional[int] = None,
                        num_workers: Optional[int] = None) -> DataLoader:
        """Sequential batches of an ``eval_dataset`` (batch size 1 when the videos' frame counts differ)."""
        bs = batch_size or self.cfg.batch_size
        if len(set(dataset.lengths)) > 1:
            bs = 1
        kw = self._loader_kwargs()
        if num_workers is not None:
            kw.update(num_workers=num_workers, prefetch_factor=2 if num_workers > 0 else None)
        return DataLoader(dataset, batch_size=bs, shuffle=False, drop_last=False, **kw)

    def val_dataloader(self):
        self.setup()
        if not self.splits.get("val"):
            return []
        return self.eval_dataloader(self.eval_dataset("val", "self", as_uint8=self.ship_uint8))

    def test_dataloader(self):
        self.setup()
        if not self.splits.get("test"):
            return []
        return self.eval_dataloader(self.eval_dataset("test", "self", as_uint8=self.ship_uint8))

    def predict_dataloader(self):
        return self.test_dataloader()
