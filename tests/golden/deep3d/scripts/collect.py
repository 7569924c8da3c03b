"""Collect the reference run into the golden (repo venv, repo root):
``python tests/golden/deep3d/scripts/collect.py /work/scratch/deep3d_ref tests/golden/deep3d``.

reference.npz: ``names``, ``coeffs`` (N×257 float32, the official net output), ``trans_params`` (N×5 float64,
``align_img``'s ``[W, H, s, t_x, t_y]``), ``lm3d_std`` (5×3), and the aligned crops as a golden summary
(``tests/datamodules/golden_images.py``: hashes, channel sums, 64 sampled pixels — no image). meta.json: frame
sha256s, the 5 points fed to the reference, the stand-in CRC32, the frames without a face, versions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "datamodules")]

from golden_images import COUNT, SEED, TILE, summarize  # noqa: E402


def main(src: Path, dst: Path) -> None:
    ref = np.load(src / "reference.npz")
    ours = json.loads((src / "ours.json").read_text())
    meta = json.loads((src / "reference.json").read_text())
    names = [str(n) for n in ref["names"]]
    np.savez_compressed(dst / "reference.npz", names=np.array(names), coeffs=ref["coeffs"].astype(np.float32),
                        trans_params=ref["trans_params"], lm3d_std=ref["lm3d_std"],
                        summary_seed=SEED, summary_count=COUNT, summary_tile=TILE, **summarize("crops", ref["crops"]))
    frames = [f"{c}_{t}" for c in ours["frames_sha256"] for t in (0, 1)]
    out = {"frames_sha256": ours["frames_sha256"], "landmarks": ours["landmarks"],
           "no_face": [f for f in frames if f not in ours["landmarks"]], "standin_crc32": ours["standin_crc32"],
           "reference_env": meta}
    (dst / "meta.json").write_text(json.dumps(out, indent=1) + "\n")
    print(names, out["no_face"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
