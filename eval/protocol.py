"""Structured schema of the ``eval_protocol`` config group: everything a number depends on is pinned here."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Optional

from datamodules.config import Crop

# choice fields as StrEnums: a bad value fails at compose time naming the key and the choices; a member compares
# equal to (and formats as) its string. Backend names (fid / fvd / id / landmark backends) stay open strings.
Mode = StrEnum("Mode", ["self", "cross", "synth_cross"])
Resize = StrEnum("Resize", ["bilinear_antialias", "bilinear", "bicubic_antialias", "bicubic", "area", "nearest"])
LpipsNet = StrEnum("LpipsNet", ["alex", "vgg"])
PredUint8 = StrEnum("PredUint8", ["round", "floor"])


@dataclass
class EvalProtocolConfig:
    name: str = "???"
    mode: Mode = Mode.self              # self (frame 0 is the source) | cross (pairs file) | synth_cross (with GT)
    split: str = "test"
    pairs_csv: Optional[str] = None     # cross: the pairs list; its sha256 is recorded (and checked when pinned)
    pairs_sha256: Optional[str] = None
    num_frames: int = 16                # frames per video (0 = all)
    stride: int = 1
    max_videos: int = 0                 # 0 = all
    resolution: int = 64                # every metric is computed at resolution² (frames read at native size)
    # how native frames reach resolution² (and the model's resolution, and back)
    resize: Resize = Resize.bilinear_antialias
    crop: Optional[Crop] = None         # none | center | meta applied to native frames; null = the data config's crop
    psnr_mse_floor: float = 1e-10       # PSNR = 10 log10(1 / max(MSE, floor)): capped at 100 dB (identical frames)
    metrics: list[str] = field(default_factory=lambda: ["l1", "psnr", "ssim"])
    fid_num_samples: int = 0            # 0 = every generated frame
    fid_backend: str = "inception_v3_2015_12_05"
    fvd_backend: str = "i3d_torchscript"  # FVD: StyleGAN-V's I3D (Kinetics-400) torchscript, 400-d logits features
    fvd_clip_len: int = 16              # FVD: non-overlapping clips of this many scored frames per video
    id_backend: str = "auto"            # arcface | dlib | auto (arcface when its weights are present, else dlib)
    arcface_model: str = "w600k_r50"    # the ArcFace of the arcface backend: w600k_r50 (buffalo_l, id_arcface) |
    #                                     glintr100 (antelopev2, id_arcface_glintr100); see eval/README.md
    landmark_backend: str = "auto"
    batch_size: int = 4
    weights: dict[str, str] = field(default_factory=dict)  # weight name -> sha256 pinned by the protocol
    lpips_net: LpipsNet = LpipsNet.alex  # alex | vgg (the metric is named lpips_<net>)
    face_upsample: int = 1              # dlib HOG detector upsampling (faces under ~80 px need 1-2)
    standin_metrics: list[str] = field(default_factory=list)  # e.g. [fid, lpips]: random stand-in nets, *_STANDIN
    use_fid_reference_cache: bool = True  # cache the real statistics per dataset + protocol
    num_grid_videos: int = 4            # videos in the logged side-by-side grid
    include_source_frame: bool = False  # self mode: score frame 0 too (it is the source: PSNR would be infinite)
    contact_radius: int = 3             # contact region = dilate_r(hand) ∩ dilate_r(face), r in px at `resolution`
    contact_crop: int = 64              # lpips_<net>_contact: the region's bounding box resized to this size²
    model_resolution: Optional[int] = None  # the model runs at this size² (null: its own cfg.resolution); frames go
    #                                         native → model_resolution directly, metrics at `resolution`
    pred_uint8: PredUint8 = PredUint8.round  # how generated frames become uint8 for the pose-evaluation backends (fan,
    #                                     openface): round | floor (FOMM's reconstruction.py writes (255 * x).astype)


# fields that cannot change a score: how many videos go through `animate` at once, how many videos the logged grid
# shows, whether the FID reference statistics come from the cache (the same statistics, only not recomputed)
HASH_EXCLUDED = ("batch_size", "num_grid_videos", "use_fid_reference_cache")
# fields left out of the hash while they hold their neutral value (the computation a protocol does without the
# field), so spelling out a neutral field never changes a protocol's hash
HASH_NEUTRAL_DEFAULTS = {"model_resolution": None, "pred_uint8": "round", "arcface_model": "w600k_r50"}


def protocol_hash(cfg: Any) -> str:
    """sha256 over the protocol's resolved content (key order independent) without ``HASH_EXCLUDED`` (fields that
    cannot change a number); every result records it and tables group by it."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in HASH_EXCLUDED
            and not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def load_protocol(name: str, overrides: list[str] | None = None):
    """Compose ``experiments/configs/eval_protocol/<name>.yaml`` against its schema (outside any Hydra app).

    ``overrides`` are ``key=value`` strings relative to the protocol (``num_frames=4``)."""
    from omegaconf import OmegaConf

    path = CONFIG_DIR / "eval_protocol" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no eval protocol {name!r} ({path}); known: {known}")
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    cfg = OmegaConf.merge(OmegaConf.structured(EvalProtocolConfig), raw)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def verify_protocol(cfg) -> dict:
    """Check what the protocol pins (the pairs file's sha256); returns facts to record beside the results."""
    facts: dict = {}
    pairs = cfg.get("pairs_csv")
    if pairs and Path(pairs).is_file():
        from eval.weights import sha256_file

        digest = sha256_file(pairs)
        facts["pairs_sha256_observed"] = digest
        if cfg.get("pairs_sha256") and digest != cfg.pairs_sha256:
            raise ValueError(f"protocol {cfg.name}: {pairs} has sha256 {digest}, the protocol pins "
                             f"{cfg.pairs_sha256} — a different test list gives different numbers")
        if not cfg.get("pairs_sha256"):
            import warnings

            warnings.warn(f"protocol {cfg.name}: pairs file {pairs} is not pinned (pairs_sha256: {digest})")
    elif pairs and cfg.get("pairs_sha256"):
        raise FileNotFoundError(f"protocol {cfg.name}: pinned pairs file {pairs} does not exist")
    return facts
