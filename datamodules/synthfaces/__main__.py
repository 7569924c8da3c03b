"""SynthFaces CLI.

    python -m datamodules.synthfaces render ROOT [--num-identities 16] [--clips-per-identity 2] [--num-frames 24]
                                                 [--resolution 64] [--fps 25] [--hand-prob 0.0]
                                                 [--num-cross-pairs 16] [--seed 0] [--workers N]
    python -m datamodules.synthfaces preview OUT.png [--resolution 128] [--seed 0]

``preview`` writes a contact sheet: rows of identities, expressions, poses, hands (with their masks), one clip
over time with its keypoints, and a cross-identity triplet (source A, driving B, ground truth A-does-B).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import cv2
import numpy as np

from .renderer import HAND_REGIONS, neutral_motion, render_clip, sample_motion
from .writer import identity_params, motion_params, render_dataset


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    h = tile.shape[0]
    fs = max(0.3, h / 320)
    cv2.rectangle(tile, (0, h - int(16 * fs / 0.4)), (tile.shape[1], h), (0, 0, 0), -1)
    cv2.putText(tile, text, (2, h - int(4 * fs / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1,
                cv2.LINE_AA)
    return tile


def _kp_overlay(frame: np.ndarray, kps: np.ndarray, visible: np.ndarray) -> np.ndarray:
    out = frame.copy()
    for (x, y), v in zip(kps, visible):
        cv2.circle(out, (int(round(x)), int(round(y))), max(1, frame.shape[0] // 96),
                   (0, 255, 0) if v else (255, 0, 0), -1, cv2.LINE_AA)
    return out


def _mask_overlay(frame: np.ndarray, hand: np.ndarray, face: np.ndarray) -> np.ndarray:
    out = frame.astype(np.float32)
    out[face] = 0.6 * out[face] + 0.4 * np.array([0, 120, 255])
    out[hand] = 0.5 * out[hand] + 0.5 * np.array([255, 60, 0])
    return out.astype(np.uint8)


def preview(out: str | Path, resolution: int = 128, seed: int = 0, cols: int = 8) -> Path:
    R = int(resolution)
    rows: list[tuple[str, list[np.ndarray]]] = []
    ids = [identity_params(seed, i) for i in range(cols)]
    rows.append(("identities", [_label(render_clip(p, neutral_motion(1), R)[0][0], p["hair_style"]) for p in ids]))
    expr = [("neutral", {}), ("mouth open", {"mouth_open": 1.0}), ("smile", {"smile": 1.0}),
            ("blink", {"blink": 1.0}), ("brows up", {"brow": 1.0}), ("brows down", {"brow": -1.0}),
            ("gaze", {"gaze_x": 1.0, "gaze_y": 0.5}), ("talk+smile", {"mouth_open": 0.5, "smile": 0.7})]
    rows.append(("expressions", [_label(render_clip(ids[1], neutral_motion(1, **kw), R)[0][0], n)
                                 for n, kw in expr[:cols]]))
    poses = [("yaw -", {"yaw": -0.45}), ("yaw +", {"yaw": 0.45}), ("pitch -", {"pitch": -0.3}),
             ("pitch +", {"pitch": 0.3}), ("roll", {"roll": 0.3}), ("scale", {"scale": 1.15}),
             ("shift", {"tx": 0.06, "ty": -0.04}), ("mixed", {"yaw": 0.3, "pitch": -0.2, "roll": -0.2})]
    rows.append(("poses", [_label(render_clip(ids[2], neutral_motion(1, **kw), R)[0][0], n)
                           for n, kw in poses[:cols]]))
    hand_tiles = []
    rng = np.random.default_rng([seed, 9])
    for j in range(cols):
        region = HAND_REGIONS[j % len(HAND_REGIONS)]
        while True:                       # draw motions until the hand goes to the wanted region
            m = sample_motion(rng, 12, hand=True)
            if m["hand"]["region"] == region:
                break
        f, _, mk = render_clip(ids[(3 + j) % cols], m, R)
        t = int(np.argmax(np.asarray(m["hand"]["progress"])))
        tile = f[t] if j < cols // 2 + 1 else _mask_overlay(f[t], mk["hand"][t], mk["face"][t])
        hand_tiles.append(_label(tile, region if j < cols // 2 + 1 else f"{region} masks"))
    rows.append(("hands", hand_tiles))
    m = motion_params(seed, 0, 0, 3 * cols, 0.0, 25)
    f, k, mk = render_clip(ids[0], m, R)
    rows.append(("clip + keypoints", [_label(_kp_overlay(f[t], k[t], mk["keypoints_visible"][t]), f"t={t}")
                                     for t in range(0, 3 * cols, 3)]))
    mb = motion_params(seed, 5, 1, 3 * cols, 1.0, 25)
    fa = render_clip(ids[4], m, R)[0]
    fb = render_clip(ids[5], mb, R)[0]
    fab = render_clip(ids[4], mb, R)[0]
    ts = np.linspace(0, 3 * cols - 1, max(1, (cols - 1) // 2)).astype(int)
    cross = ([_label(fa[0], "source A")] + [_label(fb[t], f"drive B t={t}") for t in ts]
             + [_label(fab[t], f"GT A<-B t={t}") for t in ts])
    cross += [np.zeros_like(fa[0])] * (cols - len(cross))
    rows.append(("cross-identity", cross))
    grid = np.concatenate([np.concatenate(tiles, 1) for _, tiles in rows], 0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    from datamodules.config import SynthConfig

    ap = argparse.ArgumentParser(prog="python -m datamodules.synthfaces", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render a SynthFaces dataset (FOMM layout) into ROOT")
    r.add_argument("root")
    for f in dataclasses.fields(SynthConfig):
        r.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    r.add_argument("--workers", type=int, default=0, help="render clips in this many processes (0: in this one)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--replace", action="store_true", help="replace a SynthFaces render of another config in ROOT")
    p = sub.add_parser("preview", help="write a PNG contact sheet of what SynthFaces renders")
    p.add_argument("out")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "render":
        cfg = SynthConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(SynthConfig)})
        root = render_dataset(a.root, cfg, progress=not a.no_progress, workers=a.workers, replace=a.replace)
        from .writer import read_manifest

        man = read_manifest(root)
        print(f"{root}: {man['counts']} (rendered in {man['render_seconds']} s)")
    else:
        print(preview(a.out, a.resolution, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
