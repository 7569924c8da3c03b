"""One (source, driving) pair as a training set, and the pairs file of ``python -m experiments.personalize``.

Pairs CSV columns: ``source, source_caption, driving, driving_caption, target_prompt`` (image paths relative to
the CSV's folder or absolute).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

PAIR_COLUMNS = ("source", "source_caption", "driving", "driving_caption", "target_prompt")


def load_image(path: str | Path, resolution: int) -> torch.Tensor:
    """An image file -> 3×R×R float in [0, 1]: alpha composited on white, central square crop, antialiased resize."""
    from PIL import Image

    img = Image.open(path)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


@dataclass
class Pair:
    source: Path
    source_caption: str
    driving: Path
    driving_caption: str
    target_prompt: str


def read_pairs(csv_path: str | Path) -> list[Pair]:
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path}: no pairs")
    missing = [c for c in PAIR_COLUMNS if c not in rows[0]]
    if missing:
        raise KeyError(f"{csv_path}: missing column(s) {missing}; expected {list(PAIR_COLUMNS)}")
    pairs = []
    for i, r in enumerate(rows):
        paths = {}
        for key in ("source", "driving"):
            p = Path(r[key]).expanduser()
            p = p if p.is_absolute() else (csv_path.parent / p)
            if not p.exists():
                raise FileNotFoundError(f"{csv_path} row {i + 1}: {key} image {p} does not exist")
            paths[key] = p
        pairs.append(Pair(paths["source"], r["source_caption"], paths["driving"], r["driving_caption"],
                          r["target_prompt"]))
    return pairs


class PairDataset(Dataset):
    """``length`` copies of one pair in the model's batch layout (source 3×H×W, driving 1×3×H×W, captions)."""

    def __init__(self, source: torch.Tensor, driving: torch.Tensor, source_caption: str, driving_caption: str,
                 length: int):
        self.source, self.driving = source, driving
        self.source_caption, self.driving_caption = source_caption, driving_caption
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {"source": self.source, "driving": self.driving[None], "caption_source": self.source_caption,
                "caption_driving": self.driving_caption}
