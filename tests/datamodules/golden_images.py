"""Golden summaries of official output images made from licensed real media, and the checks of our images against
them. A summary holds no pixels from which an image can be rebuilt; per image it stores:

- ``shape``, ``sha256`` and ``md5`` of the C-contiguous uint8 bytes;
- ``channel_sums``: the per-channel sums (int64);
- ``tile_sha256``: the first 16 hex digits of the sha256 of each ``TILE``×``TILE`` tile (row-major tiles, each tile's
  C-contiguous bytes): which regions are bit-exact, robust to a few pixels on a rounding boundary, and sensitive to
  any geometric change;
- ``samples``: the values at ``count`` pixel positions drawn by ``numpy.random.default_rng(seed).choice(H·W, count,
  replace=False)`` (every image of one shape uses the same positions; ``seed`` and ``count`` are stored, not the
  positions). ``count`` is kept small (64): 4096 scattered samples of a 512² face rebuild it at 24 dB PSNR, 64 give
  a blur.

Keys in the npz: ``<name>__shape``, ``<name>__sha256``, ``<name>__md5``, ``<name>__channel_sums``,
``<name>__tile_sha256``, ``<name>__samples`` for a stack of images ``<name>`` (N×H×W×C, or H×W×C for one image),
and ``summary_seed``, ``summary_count``, ``summary_tile``.
"""
from __future__ import annotations

import hashlib

import numpy as np

SEED, COUNT, TILE = 0, 64, 32
FIELDS = ("shape", "sha256", "md5", "channel_sums", "tile_sha256", "samples")


def positions(h: int, w: int, seed: int = SEED, count: int = COUNT) -> np.ndarray:
    """The sampled flat pixel indices (into H·W) of an H×W image."""
    return np.random.default_rng(seed).choice(h * w, count, replace=False)


def _stack(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"golden summary: expected uint8 H×W×C or N×H×W×C, got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images[None] if images.ndim == 3 else images)


def tile_hashes(image: np.ndarray, tile: int = TILE) -> np.ndarray:
    h, w = image.shape[:2]
    return np.array([hashlib.sha256(np.ascontiguousarray(image[y:y + tile, x:x + tile]).tobytes()).hexdigest()[:16]
                     for y in range(0, h, tile) for x in range(0, w, tile)], dtype="S16")


def summarize(name: str, images: np.ndarray, seed: int = SEED, count: int = COUNT, tile: int = TILE) -> dict:
    """The npz entries summarising ``images`` (uint8) under ``name``."""
    x = _stack(images)
    n, h, w, c = x.shape
    pos = positions(h, w, seed, count)
    return {f"{name}__shape": np.array(np.asarray(images).shape, dtype=np.int64),
            f"{name}__sha256": np.array([hashlib.sha256(im.tobytes()).hexdigest() for im in x], dtype="S64"),
            f"{name}__md5": np.array([hashlib.md5(im.tobytes()).hexdigest() for im in x], dtype="S32"),
            f"{name}__channel_sums": x.reshape(n, h * w, c).sum(1, dtype=np.int64),
            f"{name}__tile_sha256": np.stack([tile_hashes(im, tile) for im in x]),
            f"{name}__samples": x.reshape(n, h * w, c)[:, pos]}


def compare(name: str, ours: np.ndarray, golden: dict, index=None) -> dict:
    """Our uint8 ``ours`` against the golden summary ``name`` (or the images ``index`` of its stack): a dict of
    measured agreements (no asserts)."""
    x = _stack(ours)
    shape = tuple(int(s) for s in golden[f"{name}__shape"])
    if index is not None:
        index = list(index)
        golden = {f"{name}__{f}": golden[f"{name}__{f}"][index] for f in FIELDS if f != "shape"} | {
            k: golden[k] for k in ("summary_seed", "summary_count", "summary_tile")}
        shape = (len(index), *shape[-3:])
    if tuple(np.asarray(ours).shape) != shape:
        raise AssertionError(f"{name}: shape {tuple(np.asarray(ours).shape)}, golden {shape}")
    seed, count, tile = (int(golden[k]) for k in ("summary_seed", "summary_count", "summary_tile"))
    mine = summarize(name, x, seed, count, tile)
    n, h, w, _ = x.shape
    return {"exact": [a == b for a, b in zip(mine[f"{name}__sha256"], golden[f"{name}__sha256"])],
            "sample_max_diff": int(np.abs(mine[f"{name}__samples"].astype(np.int64)
                                          - golden[f"{name}__samples"].astype(np.int64)).max()),
            "sum_max_diff_per_pixel": float(np.abs(mine[f"{name}__channel_sums"]
                                                   - golden[f"{name}__channel_sums"]).max()) / (h * w),
            "tiles_exact": float((mine[f"{name}__tile_sha256"] == golden[f"{name}__tile_sha256"]).mean()),
            "images": n}


def assert_matches(name: str, ours: np.ndarray, golden: dict, tol: int = 1, exact: bool = True,
                   min_tiles_exact: float = 1.0) -> dict:
    """Our images agree with the golden summary: sampled values within ``tol`` uint8 levels, per-channel sums
    within ``tol``·H·W, at least ``min_tiles_exact`` of the tiles bit-exact and, with ``exact``, every image's
    sha256 equal."""
    r = compare(name, ours, golden)
    print(name, r)
    assert r["sample_max_diff"] <= tol, (name, r)
    assert r["sum_max_diff_per_pixel"] <= tol, (name, r)
    assert r["tiles_exact"] >= min_tiles_exact, (name, r)
    if exact:
        assert all(r["exact"]), (name, r)
    return r
