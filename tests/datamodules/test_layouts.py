"""Clip discovery for each layout, and auto-detection."""
from __future__ import annotations

import json

import numpy as np
import pytest

from datamodules.layouts import LocalClipSource, detect_layout, discover
from media import write_frames, write_video


def test_fomm(tmp_path):
    write_video(tmp_path / "train" / "id10001#abc#000010#000050.mp4", num_frames=6)
    write_video(tmp_path / "train" / "id10002#xyz#000001#000030.mp4", num_frames=6)
    write_frames(tmp_path / "test" / "id10009#qqq#000001#000030.mp4", num_frames=5)  # FOMM's PNG-folder ".mp4"
    (tmp_path / "meta").mkdir()
    np.savez(tmp_path / "meta" / "id10001#abc#000010#000050.npz", keypoints=np.zeros((6, 3, 2)))
    (tmp_path / "train" / "notes.txt").write_text("ignored")
    assert detect_layout(tmp_path) == "fomm"
    recs = {r.identity: r for r in discover(tmp_path)}
    assert set(recs) == {"id10001", "id10002", "id10009"}
    a = recs["id10001"]
    assert (a.video, a.clip_id, a.kind, a.split_hint) == ("id10001#abc", "train/id10001#abc#000010#000050", "video", "train")
    assert a.meta and a.meta.endswith("id10001#abc#000010#000050.npz") and recs["id10002"].meta is None
    assert recs["id10009"].kind == "frames" and recs["id10009"].split_hint == "test"


def test_nested(tmp_path):
    write_video(tmp_path / "alice" / "vid1" / "00001.mp4", num_frames=4)
    write_video(tmp_path / "alice" / "vid2" / "00001.mp4", num_frames=4)
    write_video(tmp_path / "bob" / "vidA" / "00003.mp4", num_frames=4)
    (tmp_path / "bob" / "vidA" / "00003.crop.json").write_text(json.dumps({"box": [1, 2, 33, 34]}))
    assert detect_layout(tmp_path) == "nested"
    recs = sorted(discover(tmp_path, "auto"), key=lambda r: r.clip_id)
    assert [(r.identity, r.video, r.clip_id) for r in recs] == [
        ("alice", "alice/vid1", "alice/vid1/00001"), ("alice", "alice/vid2", "alice/vid2/00001"),
        ("bob", "bob/vidA", "bob/vidA/00003")]
    assert recs[2].crop is not None and recs[0].crop is None
    assert LocalClipSource(tmp_path).load_crop(recs[2]) == [1, 2, 33, 34]


def test_crop_sidecar_of_an_already_cropped_clip_is_not_reapplied(tmp_path):
    """prepare crop writes cropped clips whose sidecar box refers to the *source* video."""
    write_video(tmp_path / "a" / "v" / "c_seg00.mp4", num_frames=4)
    (tmp_path / "a" / "v" / "c_seg00.crop.json").write_text(json.dumps({"source": "/raw/a/v/c.mp4", "box": [5, 5, 99, 99]}))
    rec = discover(tmp_path)[0]
    assert rec.crop is not None and LocalClipSource(tmp_path).load_crop(rec) is None


@pytest.mark.parametrize("depth", [2, 3])
def test_frames(tmp_path, depth):
    sub = ["vid0"] if depth == 3 else []
    write_frames(tmp_path.joinpath("id0", *sub, "clip0"), num_frames=3)
    write_frames(tmp_path.joinpath("id1", *sub, "clip0"), num_frames=3, ext=".jpg")
    assert detect_layout(tmp_path) == "frames"
    recs = sorted(discover(tmp_path), key=lambda r: r.clip_id)
    assert [r.identity for r in recs] == ["id0", "id1"] and all(r.kind == "frames" for r in recs)
    assert recs[0].video == ("id0/vid0" if depth == 3 else "id0/clip0")
    src = LocalClipSource(tmp_path)
    assert src.open(recs[1]).get_frames([2]).shape == (1, 48, 64, 3)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "nope")
    with pytest.raises(ValueError, match="layout"):
        discover(tmp_path, "bogus")
