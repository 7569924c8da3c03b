"""``prepare vox``: the official load_videos.py rule (frame membership with FFmpeg's printed fps, bbox scaling,
skimage resize, names), resume, missing videos, and the golden of the official script on two real clips."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from datamodules.prepare.vox import (REPORT_NAME, ffmpeg_printed_fps, prepare_vox, read_metadata, scaled_bbox)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "vox"
# the hand-made metadata rows name the real fixture clips by these video ids (tests/golden/vox/NOTES.md)
REAL_VIDEOS = {"pexelsHand01": "hand_over_face_pexels.mp4", "pyfeatFace1": "single_face.mp4"}


def _frames_of(path: Path) -> np.ndarray:
    from datamodules.video import open_video

    with open_video(path, "pyav") as r:
        return r.get_frames(list(range(r.num_frames)))


def _write_meta(path: Path, rows: list[str]) -> Path:
    path.write_text("video_id,start,end,bbox,fps,width,height,partition,person_id\n" + "\n".join(rows) + "\n")
    return path


def test_ffmpeg_printed_fps():
    from fractions import Fraction

    assert ffmpeg_printed_fps(Fraction(24000, 1001)) == 23.98
    assert ffmpeg_printed_fps(Fraction(30000, 1001)) == 29.97
    assert ffmpeg_printed_fps(Fraction(25, 1)) == 25.0
    assert ffmpeg_printed_fps(Fraction(519168, 19667)) == 26.4     # face_then_noface.mov: 26.3976… → "26.40"
    assert ffmpeg_printed_fps(Fraction(1000, 1)) == 0.0             # printed "1k fps": imageio's regex finds none
    assert ffmpeg_printed_fps(None) == 0.0


def test_scaled_bbox_truncates_like_the_official_expression():
    assert scaled_bbox((521, 41, 1081, 701), 1280, 720, (360, 640)) == (260, 20, 540, 350)
    assert scaled_bbox((100, 101, 200, 299), 1920, 1080, (360, 640)) == (33, 33, 66, 99)


def test_metadata_errors_name_file_row_and_column(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("video_id,start,end,bbox,fps,width,height\nv,0,10,1-2-3-4,25,64,64\n")
    with pytest.raises(ValueError, match="partition"):
        read_metadata(bad)
    _write_meta(bad, ["v,0,10,1-2-3,25,64,64,train,id1"])
    with pytest.raises(ValueError, match="row 2: bbox"):
        read_metadata(bad)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_metadata(tmp_path / "nope.csv")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """3010 frames, 16×16, 30000/1001 fps; frame i is flat grey (7·i mod 250)."""
    from datamodules.prepare.encode import encode_mp4

    raw = tmp_path_factory.mktemp("raw")
    frames = (np.full((16, 16, 3), (7 * i) % 250, np.uint8) for i in range(3010))
    encode_mp4(frames, raw / "vidA.mp4", fps=30000 / 1001, crf=0, preset="ultrafast")
    return raw


def test_frame_rule_uses_the_printed_fps_and_resume(long_video, tmp_path):
    """Chunk [2500, 2510) at ref 25 fps of a 29.97 fps file: the official rule (fps = 29.97 as printed) keeps frames
    2997 … 3008 (12); the exact rate 30000/1001 would keep 2998 … 3008 (11)."""
    meta = _write_meta(tmp_path / "m.csv", ["vidA,2500,2510,4-4-28-28,25,32,32,train,id00001",
                                            "vidA,0,3,0-0-32-32,25,32,32,train,id00001",
                                            "gone,0,10,0-0-8-8,25,32,32,test,id00002"])
    out = tmp_path / "out"
    report = prepare_vox(meta, long_video, out, fmt="png", image_shape=(8, 8), progress=False)
    chunk = out / "train" / "id00001#vidA#002500#002510.mp4"
    files = sorted(os.listdir(chunk))
    assert files[0] == "0000000.png" and len(files) == 12
    import cv2

    first = cv2.imread(str(chunk / files[0]))
    assert first.shape == (8, 8, 3)                     # bbox 4-4-28-28 of 32² scaled to 16² → 12² crop → 8²
    assert abs(int(first.mean()) - (7 * 2997) % 250) <= 2
    # [0, 3) at 25 → frames i·25 < 3·29.97: 0 … 3
    assert len(os.listdir(out / "train" / "id00001#vidA#000000#000003.mp4")) == 4
    s = report["summary"]
    assert s["missing_videos"] == ["gone"] and s["chunks_by_status"] == {"missing_video": 1, "written": 2}
    on_disk = json.loads((out / REPORT_NAME).read_text())
    assert on_disk["summary"] == s

    # resume: nothing redone; a deleted chunk is the only one made again
    mtime = (chunk / files[0]).stat().st_mtime_ns
    again = prepare_vox(meta, long_video, out, fmt="png", image_shape=(8, 8), progress=False)
    assert again["videos"][0]["status"] == "done_before"
    assert (chunk / files[0]).stat().st_mtime_ns == mtime
    import shutil

    shutil.rmtree(out / "train" / "id00001#vidA#000000#000003.mp4")
    third = prepare_vox(meta, long_video, out, fmt="png", image_shape=(8, 8), progress=False)
    status = {c["name"]: c["status"] for c in third["videos"][0]["chunks"]}
    assert status == {"id00001#vidA#002500#002510.mp4": "done_before", "id00001#vidA#000000#000003.mp4": "written"}


def test_unreadable_video_is_reported_not_fatal(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "broken.mp4").write_bytes(b"not a video at all")
    meta = _write_meta(tmp_path / "m.csv", ["broken,0,10,0-0-8-8,25,32,32,train,id00003"])
    report = prepare_vox(meta, raw, tmp_path / "out", progress=False)
    assert report["summary"]["unreadable_videos"] == ["broken"]
    assert report["videos"][0]["chunks"][0]["status"] == "unreadable_video"


def test_report_says_whether_the_metadata_is_the_pinned_public_file(tmp_path, monkeypatch):
    """The report records the metadata's sha256 and whether it is the public vox-metadata.csv (the official split)."""
    import hashlib

    import datamodules.prepare.vox as vox

    raw = tmp_path / "raw"
    raw.mkdir()
    meta = _write_meta(tmp_path / "m.csv", ["gone,0,10,0-0-8-8,25,32,32,train,id00004"])
    digest = hashlib.sha256(meta.read_bytes()).hexdigest()
    report = prepare_vox(meta, raw, tmp_path / "out", progress=False)
    assert report["metadata_sha256"] == digest and report["metadata_is_official"] is False
    monkeypatch.setattr(vox, "VOX_METADATA_SHA256", digest)
    assert prepare_vox(meta, raw, tmp_path / "out2", progress=False)["metadata_is_official"] is True


def _real_raw(real_fixtures: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    for vid, name in REAL_VIDEOS.items():
        (raw / f"{vid}.mp4").symlink_to(real_fixtures / "clips" / name)
    return raw


@pytest.mark.fixtures
def test_real_clips_png_bit_exact_to_official_load_videos(real_fixtures, tmp_path):
    """Our png output of two real clips = the official load_videos.py's (tests/golden/vox/NOTES.md): the same chunk
    names, frame counts, frame file names and every frame's RGB (sha256)."""
    golden = json.loads((GOLDEN / "official_png_summary.json").read_text())["chunks"]
    out = tmp_path / "out"
    report = prepare_vox(GOLDEN / "vox-metadata-handmade.csv", _real_raw(real_fixtures, tmp_path), out, fmt="png",
                         workers=2, progress=False)
    assert report["summary"]["missing_videos"] == ["missingVid01"]
    ours = sorted(f"{p}/{n}" for p in ("train", "test") for n in os.listdir(out / p))
    assert ours == sorted(golden)
    for key, g in golden.items():
        files = sorted(os.listdir(out / key))
        assert (len(files), files[0], files[-1]) == (g["num_frames"], g["first_file"], g["last_file"]), key
        frames = _frames_of(out / key)
        sums = [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest()[:16] for f in frames]
        assert sums == g["rgb_sha256_16"], f"{key}: frames {[i for i, (a, b) in enumerate(zip(sums, g['rgb_sha256_16'])) if a != b][:5]} differ"


@pytest.mark.fixtures
@pytest.mark.slow
def test_real_clips_mp4_matches_png_within_codec_loss(real_fixtures, tmp_path):
    """mp4 format: the official names and frame counts; pixels differ from the lossless png only by H.264 (yuv420p,
    CRF 23; the official mp4 differs from its own png by the same order, NOTES.md)."""
    golden = json.loads((GOLDEN / "official_png_summary.json").read_text())["chunks"]
    raw = _real_raw(real_fixtures, tmp_path)
    prepare_vox(GOLDEN / "vox-metadata-handmade.csv", raw, tmp_path / "png", fmt="png", progress=False)
    prepare_vox(GOLDEN / "vox-metadata-handmade.csv", raw, tmp_path / "mp4", fmt="mp4", progress=False)
    for key, g in golden.items():
        a, b = _frames_of(tmp_path / "png" / key), _frames_of(tmp_path / "mp4" / key)
        assert len(b) == g["num_frames"] == len(a)
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert d.mean() < 3.0 and d.max() < 64, (key, d.mean(), d.max())


def test_download_flag_without_yt_dlp_is_reported(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_yt_dlp(name, *a, **k):
        if name == "yt_dlp":
            raise ImportError("No module named 'yt_dlp'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_yt_dlp)
    meta = _write_meta(tmp_path / "m.csv", ["abcdefghijk,0,10,0-0-8-8,25,32,32,train,id00009"])
    report = prepare_vox(meta, tmp_path / "raw", tmp_path / "out", download=True, progress=False)
    v = report["videos"][0]
    assert v["status"] == "missing" and "yt-dlp" in v["download_error"]


def test_box_outside_the_frame_fails_only_its_chunk(long_video, tmp_path):
    meta = _write_meta(tmp_path / "m.csv", ["vidA,0,3,40-40-60-60,25,32,32,train,id00001",
                                            "vidA,3,6,0-0-32-32,25,32,32,train,id00001"])
    report = prepare_vox(meta, long_video, tmp_path / "out", image_shape=(8, 8), progress=False)
    status = {c["name"]: c["status"] for c in report["videos"][0]["chunks"]}
    assert status == {"id00001#vidA#000000#000003.mp4": "crop_error", "id00001#vidA#000003#000006.mp4": "written"}
    assert report["videos"][0]["frames_decoded"] < 20            # decoding stopped after the last chunk's end
