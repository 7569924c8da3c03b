"""Structured schema of the ``data`` config group (Hydra validates every key against it at compose time)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SynthConfig:
    """SynthFaces: when ``data.synth`` is set, ``data.root`` is rendered (deterministically) if it does not exist."""

    num_identities: int = 16
    clips_per_identity: int = 2
    num_frames: int = 24
    resolution: int = 64
    fps: int = 25
    hand_prob: float = 0.0          # probability that a clip has a hand touching the face
    num_cross_pairs: int = 16       # cross-identity ground-truth renders (identity A doing clip B's motion)
    seed: int = 0


@dataclass
class DataConfig:
    _target_: str = "datamodules.VideoClipDataModule"
    name: str = "video"
    root: str = "???"
    layout: str = "auto"            # auto | fomm | nested | frames | shards
    resolution: int = 64            # frames are resized to resolution×resolution
    crop: str = "center"            # none (plain resize) | center (central square) | meta (per-clip box from prepare crop)
    num_frames: int = 1             # driving frames per training sample (T); source is another frame of the clip
    batch_size: int = 8
    num_workers: int = 2
    decoder: str = "pyav"           # pyav | decord
    val_fraction: float = 0.1       # fractions of identities (splits are identity-disjoint)
    test_fraction: float = 0.1
    split_seed: int = 0
    min_frames: int = 4             # shorter clips are skipped as too short
    steps_per_epoch: int = 1000     # training samples are drawn per step from (seed, index): exact resume
    eval_num_frames: int = 16       # frames per video in val/test (a protocol may override)
    eval_stride: int = 1
    eval_max_videos: int = 0        # 0 = all
    pairs_csv: Optional[str] = None # cross-identity pairs (FOMM `source,driving` CSV); generated + saved when absent
    num_cross_pairs: int = 32
    shards: Optional[str] = None    # litdata shard dir or object-storage URL (layout=shards)
    synth: Optional[SynthConfig] = None
    seed: int = 0
