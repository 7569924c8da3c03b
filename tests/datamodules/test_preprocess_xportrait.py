"""X-Portrait's official preprocessing (datamodules.preprocess.xportrait) against the official functions of
core/test_xportrait.py on a real clip, given the same landmarks (tests/golden/xportrait/preprocess_official.npz,
made in scratch: tests/golden/xportrait/NOTES.md). The golden holds summaries of the official images (``golden_images``:
sha256, per-channel sums, 32² tile hashes, 64 sampled values; no pixels, the inputs are licensed media); ours are
quantised as the golden was (round(255·x)) and compared: driving and local bit-exact, the source within 1/255 (a few
pixels sit on the rounding boundary, 0.5 level)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_images import assert_matches

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "xportrait" / "preprocess_official.npz"


def u8(x: torch.Tensor) -> np.ndarray:
    """C×H×W or N×C×H×W in [0, 1] → H×W×C / N×H×W×C uint8, round(255·x), as the golden was stored."""
    x = x.permute(*range(x.ndim - 3), -2, -1, -3).numpy()
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


class Replay:
    """A landmark detector replaying the official run's calls in order; each image it is given must be
    byte-identical to the one the official code gave FAN at that call."""

    def __init__(self, md5, landmarks):
        self.md5, self.landmarks, self.n = list(md5), landmarks, 0

    def __call__(self, img):
        assert img.dtype == np.uint8 and img.shape == (256, 256, 3)
        i, self.n = self.n, self.n + 1
        assert hashlib.md5(np.ascontiguousarray(img).tobytes()).hexdigest() == self.md5[i], f"call {i}: other image"
        lm = self.landmarks[i]
        return None if np.isnan(lm).any() else lm


@pytest.fixture(scope="module")
def case(real_fixtures):
    from experiments.animate import read_image, read_video

    g = dict(np.load(GOLDEN))
    source = read_image(real_fixtures / "portraits/single_face.jpg")
    drv, _ = read_video(real_fixtures / "clips/talkinghead1kh_r0c0.mp4", 4)
    assert tuple(g["source_input_shape"]) == source.shape and tuple(g["driving_input_shape"]) == drv.shape
    return g, source, drv


def test_crops_and_patches_equal_the_official_code(case):
    from datamodules.preprocess.xportrait import official_inputs

    g, source, drv = case
    detect = Replay(g["call_md5"], g["call_landmarks"])
    out = official_inputs(source, list(drv), detect, best_frame=0)
    assert detect.n == len(g["call_md5"])                  # the same detector calls, in the same order
    assert_matches("source_hd_u8", u8(out["source"]), g, tol=1, exact=False, min_tiles_exact=0.8)
    assert_matches("driving_hd_u8", u8(out["driving"]), g, tol=1)
    assert_matches("local_u8", u8((out["local"] + 1) / 2), g, tol=1)
    assert out["source"].shape == (3, 512, 512) and out["driving"].shape == (4, 3, 512, 512)
    assert out["affine"] is not None and out["no_face_frames"] == 0
    c = out["patch_centres"]
    assert c.shape == (4, 3, 2) and (c >= 64).all() and (c <= 446).all() and (c == c.round()).all()


def test_the_model_places_the_official_patches(case):
    """XPortrait's local-control input from ``patch_centres`` is the official local image."""
    from datamodules.preprocess.xportrait import official_inputs
    from lit_models.xportrait.model import centred_patch_masks

    g, source, drv = case
    out = official_inputs(source, list(drv), Replay(g["call_md5"], g["call_landmarks"]), best_frame=0)
    masks = centred_patch_masks(out["patch_centres"] / 512, 512, 0.25)
    local = torch.where(masks > 0, out["driving"] * 2 - 1, torch.full_like(out["driving"][:, :1], -1.0))
    assert_matches("local_u8", u8((local + 1) / 2), g, tol=1)


def test_best_frame_by_landmarks_equals_the_official_choice(case):
    from datamodules.preprocess.xportrait import best_frame_by_landmarks, resize, to_ubyte

    g, source, drv = case
    detect = Replay(g["best_call_md5"], g["best_call_landmarks"])
    src256 = to_ubyte(resize(source[..., :3], 256))
    assert best_frame_by_landmarks(src256, list(drv), detect) == int(g["best_frame_auto"])
    assert detect.n == len(g["best_call_md5"])


def test_no_face_leaves_the_driving_unwarped_and_the_local_input_black():
    from datamodules.preprocess.xportrait import official_inputs, resize

    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    drv = rng.integers(0, 255, (2, 30, 50, 3), dtype=np.uint8)
    out = official_inputs(src, list(drv), lambda img: None)
    assert out["affine"] is None and out["no_face_frames"] == 2
    np.testing.assert_allclose(out["driving"][1].permute(1, 2, 0).numpy(), resize(drv[1], 512).astype(np.float32))
    assert (out["local"] == -1).all() and torch.isnan(out["patch_centres"]).all()


def test_fan_detector_names_the_missing_weights(tmp_path, monkeypatch):
    from datamodules.preprocess.xportrait import fan_detector

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv("PORTRAITLAB_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match="s3fd-619a316812.pth.*2DFAN4"):
        fan_detector()
