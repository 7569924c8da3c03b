"""X-NeMo's official preprocessing geometry (``datamodules.preprocess.xnemo``) against the official script's crops on
real clips: given the same BlazeFace detections, the motion crop boxes are identical and the 224² motion crops, the
224² reference motion crop and the 512² reference crop are within 1/255.

The goldens (``tests/golden/xnemo/crops_*.npz``, see its NOTES.md) hold the detections that mediapipe 0.10.11 made
in the official scratch environment (BlazeFace short range; mediapipe is not in this project's environment, where it
conflicts with opencv-python-headless), the official crop boxes of every frame, and the official crops of a few
frames. The frames are decoded here with our PyAV reader and checked against the golden's per-frame sums first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datamodules.preprocess import xnemo as pre

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "xnemo"
CASES = {"crops_single_face.npz": ("clips/single_face.mp4", "portraits/single_face.jpg"),
         "crops_talkinghead_astronaut.npz": ("clips/talkinghead1kh_r0c0.mp4", "portraits/astronaut.png")}
TOL = 1 / 255


def _load(real_fixtures, name):
    from PIL import Image

    from datamodules.video import open_video

    g = dict(np.load(GOLDEN / name))
    clip, portrait = CASES[name]
    reader = open_video(real_fixtures / clip)
    frames = reader.get_frames(list(range(reader.num_frames)))
    reference = np.asarray(Image.open(real_fixtures / portrait).convert("RGB"))
    assert list(frames.shape) == list(g["frame_shape"])
    assert np.array_equal(frames.reshape(len(frames), -1).sum(1, dtype=np.int64), g["frame_sums"]), \
        "our decoder's frames differ from those the golden was made from"
    assert int(reference.sum(dtype=np.int64)) == int(g["reference_sum"])
    return g, frames, reference


def _max_diff(a, b) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) / 255


@pytest.mark.parametrize("name", sorted(CASES))
def test_motion_crops_equal_the_official_given_the_same_detections(real_fixtures, name):
    g, frames, _ = _load(real_fixtures, name)
    H = frames.shape[1]
    boxes = pre.motion_crop_boxes(g["driving_boxes"], (H, min(H, frames.shape[2])))
    np.testing.assert_allclose(boxes, g["motion_crop_boxes"], rtol=0, atol=1e-9)
    keep = [int(k) for k in g["keep_frames"]]
    crops = pre.motion_crops(frames, g["driving_boxes"])
    assert crops.shape == (len(frames), 224, 224, 3)
    diff = _max_diff(crops[keep], g["motion_crops"])
    print(name, "motion crops max abs diff", diff)
    assert diff <= TOL


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_crops_equal_the_official(real_fixtures, name):
    """The 224² negative-motion crop (box × 1.1) and the 512² reference (aspect-preserving 2× box, anti-aliased
    resize), on the detected box and on boxes that leave the frame (shift / black padding)."""
    g, _, reference = _load(real_fixtures, name)
    box = g["reference_box"]
    d_motion = _max_diff(pre.reference_motion_crop(reference, box), g["reference_motion_crop"])
    d_ref = _max_diff(pre.reference_crop(reference, box), g["reference_crop"])
    d_oob = max(_max_diff(pre.reference_crop(reference, b), c)
                for b, c in zip(g["oob_boxes"], g["oob_reference_crops"]))
    print(name, "reference motion crop", d_motion, "reference crop", d_ref, "out-of-frame boxes", d_oob)
    assert d_motion <= TOL and d_ref <= TOL and d_oob <= TOL
    _, pad = pre.reference_box(g["oob_boxes"][0], reference.shape)
    assert pad > 0                                         # the corner box exercises the black padding


def test_geometry_rules():
    """The official rules on hand-made boxes: scale_bb keeps the box when the scaled square leaves the frame,
    the crop length is even, centres are smoothed, boxes are shifted back inside."""
    assert np.allclose(pre.scale_box([40, 40, 60, 60], 1.1, (100, 100)), [39, 39, 61, 61])
    assert np.allclose(pre.scale_box([80, 40, 99, 59], 1.1, (100, 100)), [80, 40, 99, 59])   # would leave: kept
    boxes = np.array([[10, 10, 41, 41]] + [[10 + 2 * (t % 2), 10, 41 + 2 * (t % 2), 41] for t in range(1, 30)])
    out = pre.motion_crop_boxes(boxes, (100, 100))
    w = out[:, 2] - out[:, 0]
    assert np.allclose(w, w[0]) and w[0] % 2 == 0 and w[0] == 34          # round(31 · 1.1) = 34
    assert np.ptp(out[5:25, 0]) < 0.5                                      # ±1 px jitter smoothed away
    assert np.allclose(pre.box_from_centre((5, 50), (20, 20), (100, 100)), [0, 40, 20, 60])
    with pytest.raises(ValueError, match="T×4"):
        pre.motion_crop_boxes(np.zeros((3, 2)), (10, 10))


def test_official_inputs_are_the_tensors_animate_reads(real_fixtures):
    import torch

    g, frames, reference = _load(real_fixtures, "crops_talkinghead_astronaut.npz")
    x = pre.official_inputs(reference, g["reference_box"], frames, g["driving_boxes"])
    assert x["source"].shape == (1, 3, 512, 512) and x["driving"].shape == (1, len(frames), 3, 224, 224)
    assert x["reference_motion"].shape == (1, 3, 224, 224) and x["source"].dtype == torch.float32
    gold = torch.from_numpy(g["motion_crops"][0]).permute(2, 0, 1).float() / 255
    assert float((x["driving"][0, 0] - gold).abs().max()) <= TOL
