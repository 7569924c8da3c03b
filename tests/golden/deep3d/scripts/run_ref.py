"""The official Deep3DFaceRecon_pytorch test path on the prepared frames (run with the scratch venv, from the
official checkout): ``cd /work/scratch/official/Deep3DFaceRecon_pytorch && /work/scratch/venv-deep3d/bin/python
<repo>/tests/golden/deep3d/scripts/run_ref.py /work/scratch/deep3d_ref``.

What runs is the official code, imported unchanged: ``test.py``'s ``read_data`` (loadtxt, y flip, ``align_img``;
the image tensor it returns is the network input), ``util/preprocess.py``'s ``align_img`` (called once more for its
``trans_params`` and the PIL crop, which ``read_data`` discards), ``util/load_mats.py``'s ``load_lm3d('BFM')``,
``models/networks.py``'s ``define_net_recon('resnet50', use_last_fc=False, init_path=None)`` loaded as
``BaseModel.load_networks`` does (``net.load_state_dict(torch.load(path)['net_recon'])``), ``.eval()``, and
``models/bfm.py``'s ``ParametricFaceModel.split_coeff``.

Shims (modules the coefficient path does not use, stubbed before the imports): ``kornia.geometry.warp_affine``
(``models/networks.py`` imports it for the recognition network's crop) and ``models.arcface_torch.backbones``
(a git submodule, absent in the extracted checkout; only ``RecogNetWrapper`` uses it); ``test.py``'s imports of
``options.test_options``, ``models.create_model`` and ``util.visualizer`` (nvdiffrast renderer / tensorboard, not
used by ``read_data``) are stubbed the same way. No official file is edited. numpy must be < 1.24 (the official
pin is 1.18.1): ``align_img`` builds ``np.array([w0, h0, s, t[0], t[1]])`` from ragged items, an error since 1.24.

Writes OUT/reference.npz (coefficients, trans_params, lm3d_std, the aligned crops) and OUT/reference.json.
"""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch


def _stub(name: str, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _unused(*a, **k):
    raise RuntimeError("stubbed: not on the coefficient path")


def main(out: Path) -> None:
    sys.path.insert(0, os.getcwd())
    _stub("kornia")
    _stub("kornia.geometry", warp_affine=_unused)
    sys.modules["kornia"].geometry = sys.modules["kornia.geometry"]
    _stub("models.arcface_torch")
    _stub("models.arcface_torch.backbones", get_model=_unused)
    _stub("options.test_options", TestOptions=_unused)
    _stub("util.visualizer", MyVisualizer=_unused)
    import models  # noqa: F401  (the real package; create_model is replaced below for test.py's import only)

    from models import networks
    from models.bfm import ParametricFaceModel
    from util.load_mats import load_lm3d
    from util.preprocess import align_img
    from PIL import Image

    models.create_model = _unused
    import test as official_test

    torch.set_num_threads(1)
    lm3d_std = load_lm3d("BFM")
    net = networks.define_net_recon(net_recon="resnet50", use_last_fc=False, init_path=None)
    state = torch.load(out / "checkpoints" / "standin" / "epoch_20.pth", map_location="cpu")
    net.load_state_dict(state["net_recon"])
    net.eval()

    frames = out / "datasets" / "frames"
    names = sorted(p.stem for p in (frames / "detections").glob("*.txt"))
    coeffs, params, crops, splits = [], [], [], {k: [] for k in ("exp", "angle", "trans")}
    for name in names:
        im_path, lm_path = str(frames / f"{name}.png"), str(frames / "detections" / f"{name}.txt")
        im_t, _ = official_test.read_data(im_path, lm_path, lm3d_std)
        im = Image.open(im_path).convert("RGB")
        lm = np.loadtxt(lm_path).astype(np.float32).reshape([-1, 2])
        lm[:, -1] = im.size[1] - 1 - lm[:, -1]
        trans_params, im_new, _, _ = align_img(im, lm, lm3d_std)
        crop = np.array(im_new)
        assert np.array_equal(torch.tensor(crop / 255., dtype=torch.float32).permute(2, 0, 1)[None].numpy(),
                              im_t.numpy())
        with torch.no_grad():
            c = net(im_t)
        d = ParametricFaceModel.split_coeff(None, c)
        coeffs.append(c[0].numpy())
        params.append(np.asarray(trans_params, dtype=np.float64).reshape(-1))
        crops.append(crop)
        for k in splits:
            splits[k].append(d[k][0].numpy())
    np.savez(out / "reference.npz", names=np.array(names), coeffs=np.stack(coeffs), trans_params=np.stack(params),
             crops=np.stack(crops), lm3d_std=lm3d_std, **{f"split_{k}": np.stack(v) for k, v in splits.items()})
    (out / "reference.json").write_text(json.dumps({"names": names, "torch": torch.__version__,
                                                    "numpy": np.__version__, "PIL": Image.__version__}, indent=1))
    print("done", len(names), np.stack(coeffs).shape, float(np.abs(np.stack(coeffs)).mean()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
