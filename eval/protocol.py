"""Structured schema of the ``eval_protocol`` config group: everything a number depends on is pinned here."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class EvalProtocolConfig:
    name: str = "???"
    mode: str = "self"                  # self (frame 0 is the source) | cross (pairs file) | synth_cross (with GT)
    split: str = "test"
    pairs_csv: Optional[str] = None     # cross: the pairs list; its sha256 is recorded (and checked when pinned)
    pairs_sha256: Optional[str] = None
    num_frames: int = 16                # frames per video (0 = all)
    stride: int = 1
    max_videos: int = 0                 # 0 = all
    resolution: int = 64
    resize: str = "bilinear_antialias"
    metrics: list[str] = field(default_factory=lambda: ["l1", "psnr", "ssim"])
    fid_num_samples: int = 0            # 0 = every generated frame
    fid_backend: str = "inception_v3_2015_12_05"
    id_backend: str = "auto"            # arcface | dlib | auto (arcface when its weights are present, else dlib)
    landmark_backend: str = "auto"
    batch_size: int = 4
    weights: dict[str, str] = field(default_factory=dict)  # weight name -> sha256 pinned by the protocol


def protocol_hash(cfg: Any) -> str:
    """sha256 over the protocol's resolved content (key order independent); every result records it."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
