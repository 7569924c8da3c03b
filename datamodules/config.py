"""Structured schema of the ``data`` config group (Hydra validates every key against it at compose time)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional


class Layout(StrEnum):
    """``data.layout``: how clips are stored under ``data.root`` (``datamodules.layouts``); auto detects it."""

    auto = "auto"
    fomm = "fomm"
    nested = "nested"
    frames = "frames"
    shards = "shards"


class Crop(StrEnum):
    """``data.crop``: none (plain resize) | center (central square) | meta (per-clip box from ``prepare crop``)."""

    none = "none"
    center = "center"
    meta = "meta"


class Decoder(StrEnum):
    """``data.decoder``: the video decoder of the readers."""

    pyav = "pyav"
    decord = "decord"


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
    motion_scale: float = 1.0       # × head-pose amplitudes (yaw, pitch, roll, translation, scale); 1.0 = original


@dataclass
class AugmentationConfig:
    """Training augmentation, applied identically to every frame of a sample (official FOMM / MRFA
    ``AllAugmentationTransform`` with ``flip_param`` and ``jitter_param``; see ``datamodules.augment``)."""

    horizontal_flip: bool = False
    time_flip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass
class DataConfig:
    _target_: str = "datamodules.VideoClipDataModule"
    name: str = "video"
    root: str = "???"
    layout: Layout = Layout.auto    # a StrEnum: compares equal to (and formats as) its string value
    resolution: int = 64            # frames are resized to resolution×resolution
    crop: Crop = Crop.center
    num_frames: int = 1             # driving frames per training sample (T); source is another frame of the clip
    frame_stride: int = 1           # training: the T driving frames are a window `frame_stride` frames apart
    batch_size: int = 8
    num_workers: int = 2
    decoder: Decoder = Decoder.decord  # decord | pyav (benchmarks/decode.py: decord ~2x PyAV on sequential eval, equal on training)
    decoder_threads: int = 0        # decoder threads per reader (0 = the decoder's default)
    use_meta: bool = True           # add keypoints / masks from ROOT/meta/<stem>.npz to the batch when present
    transfer_uint8: bool = True     # under a Trainer, workers ship uint8 frames; float32 [0,1] made after device transfer
    use_scan_cache: bool = True     # cache the bad-file probe in ROOT/.portraitlab_scan.json (path+size+mtime)
    val_fraction: float = 0.1       # fractions of identities (splits are identity-disjoint)
    test_fraction: float = 0.1
    split_seed: int = 0
    min_frames: int = 4             # shorter clips are skipped as too short
    steps_per_epoch: int = 1000     # training samples are drawn per step from (seed, index): exact resume
    # official FOMM / MRFA sampling: an epoch = every training identity (file-name prefix before '#') num_repeats
    # times in random order, each time one random clip of it (FramesDataset(id_sampling=True) + DatasetRepeater)
    id_sampling: bool = False
    num_repeats: int = 1
    # window: T driving frames `frame_stride` apart and a source outside them; sorted_pair: the official training
    # pair (two frames drawn with replacement, sorted: source = the first, driving = the second; num_frames=1)
    pair_sampling: str = "window"
    augmentation: Optional[AugmentationConfig] = None
    eval_num_frames: int = 16       # frames per video in val/test (a protocol may override)
    eval_stride: int = 1
    eval_max_videos: int = 0        # 0 = all
    pairs_csv: Optional[str] = None # cross-identity pairs (FOMM `source,driving` CSV); generated + saved when absent
    num_cross_pairs: int = 32
    shards: Optional[str] = None    # litdata shard dir or object-storage URL (layout=shards)
    synth: Optional[SynthConfig] = None
    # training samples also carry `driving_cross` (B×T×3×H×W): the driving frames' motion rendered on the fly with
    # another *training* identity (SynthFaces only: needs identity_params + motion in ROOT/meta/<clip>.npz)
    use_synth_cross_driving: bool = False
    seed: int = 0


def _synth_key_resolver(node) -> str:
    from datamodules.synthfaces.writer import synth_key

    return synth_key(node)


def _recipe_resolver(what: str, value=None, *, _root_=None):
    from datamodules.recipe import resolve_recipe

    return resolve_recipe(_root_, what, value)


def register_resolvers() -> None:
    """``${synth_key:${.synth}}``: the content key of a SynthFaces config (see ``synthfaces.writer.synth_key``);
    ``${data_recipe:WHAT[,VALUE]}``: an official recipe's numbers from the data on disk (``datamodules.recipe``)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("synth_key", _synth_key_resolver, replace=True)
    OmegaConf.register_new_resolver("data_recipe", _recipe_resolver, replace=True)


register_resolvers()
