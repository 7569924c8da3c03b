"""Inputs of the Deep3DFaceRecon reference run (run with the repo's venv from the repo root):
``python tests/golden/deep3d/scripts/prepare.py /work/scratch/deep3d_ref``.

Writes, under OUT (a scratch folder outside the repo):
* ``datasets/frames/<clip>_<t>.png`` — the evaluated uint8 frames (``tests/eval/threedmm_frames.py``), lossless;
* ``datasets/frames/detections/<clip>_<t>.txt`` — the 5 points OUR pipeline finds (``eval.threedmm.MTCNNLandmarks``,
  image pixels, y down), ``np.savetxt`` as the official ``datasets/examples/detections/*.txt``;
* ``checkpoints/standin/epoch_20.pth`` — ``{"net_recon": eval.threedmm.standin_state_dict()}`` (the layout of the
  released checkpoint);
* ``ours.json`` — frame sha256s, the stand-in CRC32, our landmarks.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "eval")]

from eval.threedmm import MTCNNLandmarks, standin_digest, standin_state_dict  # noqa: E402
from threedmm_frames import golden_frames  # noqa: E402


def main(out: Path) -> None:
    import os

    root = Path(os.environ.get("PORTRAITLAB_FIXTURES", REPO.parent / "shared" / "fixtures" / "real"))
    frames = golden_frames(root / "clips")
    det = MTCNNLandmarks()
    (out / "datasets" / "frames" / "detections").mkdir(parents=True, exist_ok=True)
    info = {"frames_sha256": {}, "landmarks": {}, "standin_crc32": standin_digest()}
    for name, fr in frames.items():
        info["frames_sha256"][name] = hashlib.sha256(fr.tobytes()).hexdigest()
        lms = det(fr)
        for t, (im, lm) in enumerate(zip(fr, lms)):
            key = f"{name}_{t}"
            Image.fromarray(im).save(out / "datasets" / "frames" / f"{key}.png")
            if lm is None:
                print("no face:", key)
                continue
            np.savetxt(out / "datasets" / "frames" / "detections" / f"{key}.txt", lm)
            info["landmarks"][key] = lm.tolist()
    (out / "checkpoints" / "standin").mkdir(parents=True, exist_ok=True)
    torch.save({"net_recon": standin_state_dict()}, out / "checkpoints" / "standin" / "epoch_20.pth")
    (out / "ours.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: len(v) if isinstance(v, dict) else v for k, v in info.items()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
