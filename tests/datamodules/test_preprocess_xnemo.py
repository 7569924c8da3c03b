"""X-NeMo's official preprocessing geometry (``datamodules.preprocess.xnemo``) against the official script's crops on
real clips: given the same BlazeFace detections, the motion crop boxes are identical and the 224² motion crops, the
224² reference motion crop and the 512² reference crop are bit-identical (sha256 of the uint8 bytes; sampled values
within 1/255, per-channel sums within 1/255 per pixel, every 32² tile's hash equal).

The goldens (``tests/golden/xnemo/crops_*.npz``, see its NOTES.md) hold the detections that mediapipe 0.10.11 made
in the official scratch environment (BlazeFace short range; mediapipe is not in this project's environment, where it
conflicts with opencv-python-headless), the official crop boxes of every frame, and summaries of the official crops
of a few frames (``golden_images``: hashes, sums, 64 sampled values; no pixels, the clips are licensed media).
The frames are decoded here with our PyAV reader and checked against the golden's per-frame sums first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datamodules.preprocess import xnemo as pre
from golden_images import assert_matches, compare

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "xnemo"
CASES = {"crops_single_face.npz": ("clips/single_face.mp4", "portraits/single_face.jpg"),
         "crops_talkinghead_astronaut.npz": ("clips/talkinghead1kh_r0c0.mp4", "portraits/astronaut.png")}
TOL = 1                                                    # uint8 levels (1/255)


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


@pytest.mark.parametrize("name", sorted(CASES))
def test_motion_crops_equal_the_official_given_the_same_detections(real_fixtures, name):
    g, frames, _ = _load(real_fixtures, name)
    H = frames.shape[1]
    boxes = pre.motion_crop_boxes(g["driving_boxes"], (H, min(H, frames.shape[2])))
    np.testing.assert_allclose(boxes, g["motion_crop_boxes"], rtol=0, atol=1e-9)
    keep = [int(k) for k in g["keep_frames"]]
    crops = pre.motion_crops(frames, g["driving_boxes"])
    assert crops.shape == (len(frames), 224, 224, 3)
    assert_matches("motion_crops", crops[keep], g, tol=TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_crops_equal_the_official(real_fixtures, name):
    """The 224² negative-motion crop (box × 1.1) and the 512² reference (aspect-preserving 2× box, anti-aliased
    resize), on the detected box and on boxes that leave the frame (shift / black padding)."""
    g, _, reference = _load(real_fixtures, name)
    box = g["reference_box"]
    assert_matches("reference_motion_crop", pre.reference_motion_crop(reference, box), g, tol=TOL)
    assert_matches("reference_crop", pre.reference_crop(reference, box), g, tol=TOL)
    assert_matches("oob_reference_crops", np.stack([pre.reference_crop(reference, b) for b in g["oob_boxes"]]), g,
                   tol=TOL)
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
    first = (x["driving"][0, :1].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert np.allclose(first.astype(np.float32) / 255, x["driving"][0, :1].permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert int(g["keep_frames"][0]) == 0
    assert all(compare("motion_crops", first, g, index=[0])["exact"])
