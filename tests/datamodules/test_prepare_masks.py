"""``prepare masks``: InterAnimate side files (hand / face masks, contact region) on the real hand-over-face clip;
the hand detector's weights are absent here, so its seeded random-weight stand-in (labelled) runs the plumbing."""
from __future__ import annotations

import numpy as np
import pytest

from datamodules.prepare.masks import (KEYPOINTRCNN_FILE, KEYPOINTRCNN_URL, MissingDetectorWeights, contact_region,
                                       prepare_masks)


def test_contact_region_is_where_dilated_hand_meets_dilated_face():
    face = np.zeros((100, 100), bool)
    face[20:60, 20:60] = True
    near = np.zeros_like(face)
    near[61:80, 30:50] = True            # one pixel below the face
    far = np.zeros_like(face)
    far[85:99, 80:99] = True
    c = contact_region(near, face)
    assert c.any() and c[55:66].any() and not c[:50].any()
    assert not contact_region(far, face).any()


def test_missing_hand_weights_fail_before_any_clip_naming_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITLAB_KEYPOINTRCNN", str(tmp_path / "nowhere" / KEYPOINTRCNN_FILE))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "clip.mp4").write_bytes(b"not read")
    with pytest.raises(MissingDetectorWeights) as e:
        prepare_masks(tmp_path / "root", hand="keypointrcnn", progress=False)
    assert KEYPOINTRCNN_FILE in str(e.value) and KEYPOINTRCNN_URL in str(e.value)
    assert not (tmp_path / "root" / "meta").exists()


def test_weights_registry_names_the_hand_detector():
    from eval.weights import REGISTRY

    w = REGISTRY["keypointrcnn_resnet50_fpn_coco"]
    assert w.filename == KEYPOINTRCNN_FILE and w.url == KEYPOINTRCNN_URL and w.env == "PORTRAITLAB_KEYPOINTRCNN"


@pytest.mark.fixtures
def test_side_files_on_the_real_hand_over_face_clip(real_fixtures, tmp_path):
    """dlib68 face masks on real frames (a real detector with its shipped weights): the face is found in every frame,
    the mask covers the face (nose area) and not the wooden background; the side file is read by the DataModule."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "hand_over_face.mp4").symlink_to(real_fixtures / "clips" / "hand_over_face_pexels.mp4")
    report = prepare_masks(root, hand="keypointrcnn_STANDIN", max_frames=2, progress=False)
    assert report["summary"]["standin"] and report["clips"][0]["status"] == "written"
    z = np.load(root / "meta" / "hand_over_face.npz")
    assert str(z["detector_hand"]) == "keypointrcnn_STANDIN" and str(z["detector_face"]) == "dlib68"
    face, hand, contact = z["masks_face"], z["masks_hand"], z["masks_contact"]
    assert face.shape == hand.shape == contact.shape == (2, 360, 640) and z["face_found"].all()
    assert face[:, 200, 470].all() and not face[:, 200, 100].any()        # nose area vs background
    assert 0.1 < face.mean() < 0.35
    assert np.array_equal(contact, np.stack([contact_region(h, f) for h, f in zip(hand, face)]))
    assert z["contact"].tolist() == [bool(c.any()) for c in contact]
    again = prepare_masks(root, hand="keypointrcnn_STANDIN", max_frames=2, progress=False)
    assert again["clips"][0]["status"] == "done_before"

    from datamodules import VideoClipDataModule

    dm = VideoClipDataModule(root=str(root), layout="nested", resolution=64, crop="none", num_workers=0,
                             val_fraction=0.0, test_fraction=0.0, use_scan_cache=False, decoder="pyav")
    dm.setup()
    item = dm.eval_dataset("train", "self", num_frames=2)[0]
    assert set(item["masks"]) == {"contact", "face", "hand"} and item["masks"]["face"].shape == (2, 1, 64, 64)
