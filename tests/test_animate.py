"""`experiments.animate` on the real fixtures: face crop, RGBA sources, frame counts, grid output."""
from __future__ import annotations

import numpy as np
import pytest


def decode(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("source", ["portraits/astronaut.png", "portraits/hand_on_forehead_rgba.png"])
def test_animate_copy_source_on_real_fixtures(compose_cfg, real_fixtures, tmp_path, source):
    from experiments.animate import animate, crop_resize, read_image, square_box

    out = tmp_path / "out.mp4"
    cfg = compose_cfg("animate", ["model=copy_source", f"source={real_fixtures / source}",
                                  f"driving={real_fixtures / 'clips/single_face.mp4'}", f"out={out}",
                                  "animate_crop=face", "max_frames=6", f"run_dir={tmp_path}"])
    animate(cfg)
    frames = decode(out)
    assert frames.shape == (6, 64, 64, 3)
    grid = decode(out.with_name("out_grid.mp4"))
    assert grid.shape == (6, 64, 3 * 64, 3)
    # copy-source: every generated frame is the cropped source (up to H.264 error)
    img = read_image(real_fixtures / source)[None]
    expected = (crop_resize(img, square_box(img, "face"), 64)[0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(frames.astype(float) - expected[None]).mean() < 6


def test_face_crop_is_tighter_than_the_central_square(real_fixtures):
    from experiments.animate import read_image, square_box

    img = read_image(real_fixtures / "portraits/astronaut.png")[None]
    face = square_box(img, "face")
    centre = square_box(img, "center")
    assert face[2] - face[0] < centre[2] - centre[0]
    # the astronaut's face is in the upper half of the 512² image
    assert (face[1] + face[3]) / 2 < 300


def test_animate_requires_ckpt_for_trainable_models(compose_cfg, tmp_path):
    from experiments.animate import animate
    from experiments.runtime import ConfigError

    cfg = compose_cfg("animate", ["model=direct", "source=a.png", "driving=b.mp4", f"out={tmp_path / 'o.mp4'}"])
    with pytest.raises(ConfigError, match="ckpt"):
        animate(cfg)


def _displayed() -> np.ndarray:
    """An asymmetric 24×40 RGB test image (a bright bar at the top, a gradient left → right)."""
    img = np.zeros((24, 40, 3), np.uint8)
    img[..., 0] = np.linspace(0, 250, 40, dtype=np.uint8)[None]
    img[:5, :, 1] = 240
    img[..., 2] = np.arange(24, dtype=np.uint8)[:, None] * 10
    return img


@pytest.mark.parametrize("orientation, stored", [(6, lambda d: np.rot90(d, 1)), (8, lambda d: np.rot90(d, -1)),
                                                 (3, lambda d: np.rot90(d, 2))])
def test_read_image_applies_exif_orientation(tmp_path, orientation, stored):
    """A phone photo: pixels stored in sensor orientation plus an EXIF Orientation tag; the tag is applied (ignored,
    the portrait would come out lying on its side)."""
    from PIL import Image

    from experiments.animate import read_image

    shown = _displayed()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored(shown))).save(tmp_path / "p.jpg", quality=98, subsampling=0, exif=exif)
    got = read_image(tmp_path / "p.jpg")
    assert got.shape == shown.shape
    assert np.abs(got.astype(int) - shown).mean() < 4


def test_read_image_scales_16_bit_pngs(tmp_path):
    """16-bit grayscale PNG (not clipped to white) and 16-bit RGB / RGBA PNGs give the 8-bit image."""
    import cv2

    from experiments.animate import read_image

    shown = _displayed()
    cv2.imwrite(str(tmp_path / "g16.png"), shown[..., 0].astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "rgb16.png"), cv2.cvtColor(shown, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    rgba = np.concatenate([shown, np.full((*shown.shape[:2], 1), 255, np.uint8)], 2).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "rgba16.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), np.repeat(shown[..., :1], 3, axis=2))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png"), shown)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba16.png"), shown)


def test_landmark_centred_local_control_gets_the_driving_landmarks(real_fixtures):
    """X-Portrait's eye/mouth patches are centred on the driving landmarks: `run_animation` detects dlib's 68
    landmarks on every driving crop and hands them to `animate(keypoints=)` with the whole clip in one call; models
    without local control get none."""
    import torch

    from experiments.animate import crop_resize, driving_landmarks, read_video, run_animation, square_box

    drv, _ = read_video(real_fixtures / "clips/single_face.mp4", 4)
    driving = crop_resize(drv, square_box(drv, "face"), 256)
    kp = driving_landmarks(driving)
    assert kp is not None and kp.shape == (4, 68, 2)
    assert kp.min() >= 0 and kp.max() < 256 and (kp[:, 36:48].mean(1)[:, 1] < kp[:, 48:68].mean(1)[:, 1]).all()

    class Spy(torch.nn.Module):
        def __init__(self, local):
            super().__init__()
            self.cfg, self.seen = type("C", (), {"use_local_control": local})(), []

        def animate(self, source, driving, keypoints=None):
            self.seen.append(keypoints)
            return driving

    for local in (True, False):
        spy = Spy(local)
        run_animation(spy, driving[0], driving, relative=False, progress=False)
        if local:
            assert [k.shape for k in spy.seen] == [(1, 4, 68, 2)]
            torch.testing.assert_close(spy.seen[0][0], kp)
        else:
            assert spy.seen == [None]
