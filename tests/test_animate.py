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
