"""datamodules.face: dlib detection / landmarks on real portraits, input formats, insightface's missing-model error."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules.face import (BUFFALO_L_URL, arcface_align, FaceBox, FaceModelNotFound, box_iou, get_face_detector,
                              insightface_model_file, landmarks5_from_68, to_rgb_uint8)


@pytest.fixture(scope="module")
def dlib_det():
    return get_face_detector("dlib")


@pytest.fixture(scope="module")
def astronaut():
    import skimage.data

    return skimage.data.astronaut()


def _inside(points: np.ndarray, box: FaceBox, margin: float = 0.1) -> np.ndarray:
    mx, my = margin * box.width, margin * box.height
    return ((points[:, 0] >= box.x0 - mx) & (points[:, 0] <= box.x1 + mx)
            & (points[:, 1] >= box.y0 - my) & (points[:, 1] <= box.y1 + my))


def _check_landmarks(det, image, box):
    p68 = det.landmarks68(image, box)
    assert p68.shape == (68, 2) and p68.dtype == np.float32
    assert _inside(p68, box).mean() >= 0.95, "68-point landmarks should land in (or at the rim of) the face box"
    # anatomy in image coordinates: eyes above the nose tip, nose above the mouth, left eye left of right eye
    eye_l, eye_r = p68[36:42].mean(0), p68[42:48].mean(0)
    assert eye_l[0] < eye_r[0]
    assert max(eye_l[1], eye_r[1]) < p68[30, 1] < p68[48:68, 1].mean()
    p5 = det.landmarks5(image, box)
    assert p5.shape == (5, 2) and _inside(p5, box).all()
    np.testing.assert_allclose(p5, landmarks5_from_68(p68))
    np.testing.assert_allclose(p5[0], p68[36:42].mean(0), rtol=1e-6)
    assert p5[0, 0] < p5[1, 0] and p5[3, 0] < p5[4, 0]          # ArcFace order: image-left before image-right
    raw5 = det.landmarks5(image, box, layout="dlib")              # dlib's own 5-point predictor
    assert raw5.shape == (5, 2) and _inside(raw5, box).all()
    return p68


@pytest.mark.fixtures
def test_dlib_single_face_and_landmarks(dlib_det, real_fixtures):
    img = np.asarray(Image.open(real_fixtures / "portraits" / "single_face.jpg").convert("RGB"))
    boxes = dlib_det.detect(img)
    assert len(boxes) == 1
    b = boxes[0]
    h, w = img.shape[:2]
    assert 0 <= b.x0 < b.x1 <= w and 0 <= b.y0 < b.y1 <= h
    assert b.width > 0.2 * w  # a portrait: the face is large
    _check_landmarks(dlib_det, img, b)


def test_dlib_astronaut(dlib_det, astronaut):
    boxes = dlib_det.detect(astronaut)
    assert len(boxes) == 1
    b = boxes[0]
    cx, cy = b.center
    # Eileen Collins' face sits in the upper middle of the 512² image (below her hair, above the flag patch)
    assert 150 < cx < 300 and 50 < cy < 200 and 50 < b.width < 150
    p68 = _check_landmarks(dlib_det, astronaut, b)
    # the same face as a list of boxes via the array API
    assert box_iou([b.x0, b.y0, b.x1, b.y1], b.as_array()) == pytest.approx(1.0)
    assert p68[8, 1] > p68[30, 1]  # the chin (8) is below the nose tip (30)


@pytest.mark.fixtures
def test_dlib_multi_face(dlib_det, real_fixtures):
    img = Image.open(real_fixtures / "portraits" / "multi_face.jpg")
    boxes = dlib_det.detect(img)
    # five people; dlib's HOG at upsample=0 finds four of them (the fifth face is turned away), never more
    assert 4 <= len(boxes) <= 5
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert boxes[i].iou(boxes[j]) < 0.2, "distinct people, not duplicate detections"
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    for b in boxes:
        assert _inside(dlib_det.landmarks68(img, b), b).mean() >= 0.9


def test_input_formats_give_the_same_face(dlib_det, astronaut):
    ref = dlib_det.detect(astronaut)[0]
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    rgba = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], axis=2)
    import torch

    chw = torch.from_numpy(astronaut).permute(2, 0, 1).float() / 255.0
    for variant in (gray, gray[..., None], rgba, astronaut.astype(np.float32) / 255.0, chw, Image.fromarray(rgba)):
        boxes = dlib_det.detect(variant)
        assert len(boxes) == 1 and boxes[0].iou(ref) > 0.8


def test_to_rgb_uint8_alpha_and_gray():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255          # opaque red-ish pixel
    rgba[1, 1, 3] = 0            # fully transparent → background
    out = to_rgb_uint8(rgba, background=255)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    g = to_rgb_uint8(np.array([[0.0, 1.0]], np.float32))
    assert g.tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_detection_rescaling_maps_boxes_back(dlib_det, astronaut):
    ref = dlib_det.detect(astronaut)[0]
    small = dlib_det.detect(astronaut, max_side=400)  # detect at 400², boxes in 512² pixels
    assert len(small) == 1 and small[0].iou(ref) > 0.6
    import cv2

    tiny = cv2.resize(astronaut, (200, 200), interpolation=cv2.INTER_AREA)  # face ≈ 34 px: too small for HOG
    assert dlib_det.detect(tiny) == []
    up = dlib_det.detect(tiny, min_side=512)  # upscaled for detection, mapped back to 200² pixels
    assert len(up) == 1 and up[0].iou(ref.scaled(200 / 512)) > 0.6


def test_insightface_missing_models_names_file_folder_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITLAB_INSIGHTFACE_ROOT", str(tmp_path))
    with pytest.raises(FaceModelNotFound) as e:
        get_face_detector("insightface")
    msg = str(e.value)
    assert "det_10g.onnx" in msg and str(tmp_path) in msg and BUFFALO_L_URL in msg
    # default location: insightface's cache under $HOME
    monkeypatch.delenv("PORTRAITLAB_INSIGHTFACE_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FaceModelNotFound, match=r"\.insightface/models/buffalo_l"):
        insightface_model_file("1k3d68.onnx")
    # a file that exists is found (root = the pack folder or an insightface root holding models/buffalo_l)
    pack = tmp_path / "ins" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"")
    assert insightface_model_file("det_10g.onnx", root=tmp_path / "ins") == pack / "det_10g.onnx"
    assert insightface_model_file("det_10g.onnx", root=pack) == pack / "det_10g.onnx"


def test_unknown_backend():
    with pytest.raises(ValueError, match="dlib"):
        get_face_detector("mtcnn")


def test_arcface_alignment_maps_landmarks_onto_the_template(dlib_det, astronaut):
    from insightface.utils.face_align import arcface_dst

    b = dlib_det.detect(astronaut)[0]
    p5 = dlib_det.landmarks5(astronaut, b)
    crop, m = arcface_align(astronaut, p5)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8 and crop.std() > 10
    mapped = p5 @ m[:, :2].T + m[:, 2]
    # a similarity fit of five points: each lands within a few pixels of its template position
    assert np.abs(mapped - arcface_dst).max() < 6.0
