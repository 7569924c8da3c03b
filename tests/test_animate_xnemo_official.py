"""``experiments.animate`` on an X-NeMo checkpoint runs X-NeMo's official preprocessing by default
(``preprocess=auto`` → ``datamodules.preprocess.xnemo``): given the official BlazeFace detections (from the golden
``tests/golden/xnemo/crops_talkinghead_astronaut.npz``, made by x-nemo-inference's own script; the detector is
replaced by one returning them), the tensors reaching ``XNeMo.animate`` are the official crops, bit for bit.
Without mediapipe or the BlazeFace model file it fails before reading any media or running the model, naming what
is missing; ``preprocess=none`` keeps the centre crops at the model's resolution."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "datamodules"))
from golden_images import assert_matches  # noqa: E402

GOLDENS = Path(__file__).resolve().parent / "golden" / "xnemo"
CASES = {"crops_talkinghead_astronaut.npz": ("clips/talkinghead1kh_r0c0.mp4", "portraits/astronaut.png"),
         "crops_single_face.npz": ("clips/single_face.mp4", "portraits/single_face.jpg")}   # 640×360: left square
GOLDEN = GOLDENS / "crops_talkinghead_astronaut.npz"
CLIP, PORTRAIT = CASES[GOLDEN.name]
SHRINK = ["model.resolution=32", "model.unet.sample_size=8", "model.motion_encoder_resolution=16",
          "model.motion_encoder_channels=[8,16]", "model.num_inference_steps=1", "model.motion_dim=64"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from experiments.compose import compose
    from experiments.train import save_untrained_checkpoint
    from lit_models.registry import build_model

    torch.manual_seed(0)
    model = build_model(compose("train", ["model=xnemo_tiny", *SHRINK]).model)
    return save_untrained_checkpoint(model, tmp_path_factory.mktemp("xnemo") / "x.ckpt")


@pytest.fixture
def spy(monkeypatch):
    """Records what ``XNeMo.animate`` is called with (the real signature, so callers pass only its keywords)."""
    from lit_models.xnemo.model import XNeMo

    seen, real = [], XNeMo.animate

    @functools.wraps(real)
    def wrapped(self, source, driving, **kw):
        seen.append({"source": source, "driving": driving, **kw})
        return real(self, source, driving, **kw)

    monkeypatch.setattr(XNeMo, "animate", wrapped)
    return seen


def u8(x: torch.Tensor) -> np.ndarray:
    """[0, 1] …×3×H×W (exact multiples of 1/255) → uint8 …×H×W×3."""
    return (x.movedim(-3, -1) * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("name", ["crops_talkinghead_astronaut.npz",
                                  pytest.param("crops_single_face.npz", marks=pytest.mark.slow)])   # 72 frames, ~25 s
def test_animate_feeds_xnemo_the_official_crops(name, compose_cfg, real_fixtures, ckpt, spy, tmp_path, monkeypatch):
    import datamodules.preprocess.xnemo as pre
    from experiments.animate import animate

    g, (clip, portrait) = dict(np.load(GOLDENS / name)), CASES[name]
    calls = []

    def detect(images, video=True, fps=25.0):      # the official detections of these very frames
        calls.append({"shapes": {np.asarray(i).shape for i in images}, "n": len(images), "video": video, "fps": fps})
        return g["driving_boxes"] if video else g["reference_box"][None]

    model_file = tmp_path / "blaze_face_short_range.tflite"
    monkeypatch.setattr("eval.weights.resolve", lambda name, **kw: model_file if name == "blazeface" else None)
    monkeypatch.setattr(pre, "blazeface_detector", lambda path: calls.append(path) or detect)
    out = tmp_path / "o.mp4"
    animate(compose_cfg("animate", [f"ckpt={ckpt}", f"source={real_fixtures / portrait}",
                                    f"driving={real_fixtures / clip}", f"out={out}", f"run_dir={tmp_path}"]))
    # the detector: the registry's file; the reference in image mode, each frame's left square in video mode at 30 fps
    assert calls[0] == str(model_file)
    H, W = (int(s) for s in g["frame_shape"][1:3])
    from PIL import Image

    w, h = Image.open(real_fixtures / portrait).size
    assert calls[1]["video"] is False and calls[1]["n"] == 1 and calls[1]["shapes"] == {(h, w, 3)}
    assert calls[2] == {"shapes": {(H, min(H, W), 3)}, "n": len(g["driving_boxes"]), "video": True,
                        "fps": float(g["fps"])}
    (x,) = spy
    assert x["source"].shape == (1, 3, 512, 512) and x["driving"].shape == (1, len(g["driving_boxes"]), 3, 224, 224)
    keep = [int(k) for k in g["keep_frames"]]
    assert_matches("reference_crop", u8(x["source"][0]), g, tol=1)
    assert_matches("motion_crops", u8(x["driving"][0, keep]), g, tol=1)
    assert_matches("reference_motion_crop", u8(x["reference_motion"][0]), g, tol=1)
    torch.testing.assert_close(x["clip_pixels"], pre.clip_pixels(u8(x["source"][0])), rtol=0, atol=0)
    assert isinstance(x["generator"], torch.Generator)
    import av

    with av.open(str(out)) as c:                     # the official output size: the reference's 512²
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == len(g["driving_boxes"]) and frames[0].shape == (512, 512, 3)


@pytest.fixture
def no_loading(monkeypatch):
    """The checkpoint's weights must not be loaded (the detector's checks come first)."""
    monkeypatch.setattr("lit_models.registry.load_model", lambda *a, **k: pytest.fail("weights loaded first"))


def _args(ckpt, tmp_path, *extra):
    # source / driving do not exist: reading them would fail with another error
    return [f"ckpt={ckpt}", "source=missing.png", "driving=missing.mp4", f"out={tmp_path / 'o.mp4'}",
            f"run_dir={tmp_path}", *extra]


def test_missing_blazeface_model_fails_before_any_work(compose_cfg, ckpt, spy, tmp_path, monkeypatch,
                                                       no_loading):
    from experiments.animate import animate
    from experiments.runtime import ConfigError

    monkeypatch.setenv("PORTRAITLAB_BLAZEFACE", str(tmp_path / "absent" / "blaze_face_short_range.tflite"))
    with pytest.raises(ConfigError) as err:
        animate(compose_cfg("animate", _args(ckpt, tmp_path)))
    msg = str(err.value)
    assert "blaze_face_short_range.tflite" in msg and str(tmp_path / "absent") in msg
    assert "python -m eval.weights fetch blazeface" in msg and "https://" in msg
    assert spy == []


def test_missing_mediapipe_fails_before_any_work(compose_cfg, ckpt, spy, tmp_path, monkeypatch,
                                                 no_loading):
    from experiments.animate import animate
    from experiments.runtime import ConfigError

    model_file = tmp_path / "blaze_face_short_range.tflite"
    model_file.write_bytes(b"x")
    monkeypatch.setattr("eval.weights.resolve", lambda name, **kw: model_file)
    monkeypatch.setitem(sys.modules, "mediapipe", None)          # `import mediapipe` raises ImportError
    with pytest.raises(ConfigError, match=r"mediapipe package: `pip install --no-deps mediapipe==") as err:
        animate(compose_cfg("animate", _args(ckpt, tmp_path)))
    assert "preprocess=none" in str(err.value) and spy == []
    with pytest.raises(ConfigError, match="mediapipe"):           # preprocess=official: the same check
        animate(compose_cfg("animate", _args(ckpt, tmp_path, "preprocess=official")))


def test_preprocess_none_keeps_the_centre_crops(compose_cfg, real_fixtures, ckpt, spy, tmp_path, monkeypatch):
    import datamodules.preprocess.xnemo as pre
    from experiments.animate import animate, crop_resize, read_image, read_video, square_box

    monkeypatch.setattr(pre, "blazeface_detector", lambda path: pytest.fail("no detector with preprocess=none"))
    animate(compose_cfg("animate", [f"ckpt={ckpt}", f"source={real_fixtures / PORTRAIT}",
                                    f"driving={real_fixtures / CLIP}", f"out={tmp_path / 'o.mp4'}", "max_frames=3",
                                    f"run_dir={tmp_path}", "preprocess=none"]))
    (x,) = spy
    img = read_image(real_fixtures / PORTRAIT)[None]
    drv, _ = read_video(real_fixtures / CLIP, 3)
    torch.testing.assert_close(x["source"], crop_resize(img, square_box(img, "center"), 32), rtol=0, atol=0)
    torch.testing.assert_close(x["driving"], crop_resize(drv, square_box(drv, "center"), 32)[None], rtol=0, atol=0)
    assert "reference_motion" not in x and "clip_pixels" not in x


class _Det:
    def __init__(self, score, x, y, w, h):
        self.categories = [type("C", (), {"score": score})()]
        self.bounding_box = type("B", (), {"origin_x": x, "origin_y": y, "width": w, "height": h})()


def test_extract_box_follows_the_official_rules():
    """``extract_bbox_mp``: the highest score wins, boxes clipped at 0; no face / several faces all above 0.8 stop
    the official script, and ours with a message naming the frame."""
    from datamodules.preprocess.xnemo import extract_box

    assert extract_box([_Det(0.6, -3, 5, 10, 10), _Det(0.9, 20, 20, 8, 6)]).tolist() == [20, 20, 28, 26]
    assert extract_box([_Det(0.7, -3, 5, 10, 10)]).tolist() == [0, 5, 7, 15]
    with pytest.raises(ValueError, match="no face in frame 4"):
        extract_box([], 4)
    with pytest.raises(ValueError, match="2 faces in frame 1"):
        extract_box([_Det(0.85, 0, 0, 5, 5), _Det(0.95, 9, 9, 5, 5)], 1)


def test_blazeface_reproduces_the_official_detections(real_fixtures):
    """With mediapipe installed (the ``official`` extra) and the registry's BlazeFace file: the official detections
    of the golden clip, exactly."""
    pytest.importorskip("mediapipe", reason="needs mediapipe (pip install --no-deps mediapipe==0.10.35)")
    from eval.weights import MissingWeightsError, resolve

    try:
        path = resolve("blazeface", verify=True)
    except MissingWeightsError as err:
        pytest.skip(f"needs the BlazeFace model file: {err}")
    from datamodules.preprocess.xnemo import blazeface_detector, detect_and_crop
    from experiments.animate import read_image, read_video

    g = dict(np.load(GOLDEN))
    frames, fps = read_video(real_fixtures / CLIP)
    inp = detect_and_crop(read_image(real_fixtures / PORTRAIT), list(frames), blazeface_detector(str(path)), fps)
    np.testing.assert_array_equal(inp["reference_box"], g["reference_box"])
    np.testing.assert_array_equal(inp["driving_boxes"], g["driving_boxes"])
