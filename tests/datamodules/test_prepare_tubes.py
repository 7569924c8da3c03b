"""``prepare th1kh`` / ``prepare celebvhq``: FFmpeg's crop geometry, CelebV-HQ's time strings and square box, and the
goldens of the official scripts on real clips (png output bit-exact)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from datamodules.prepare.tubes import (celebvhq_square, celebvhq_timestr, ffmpeg_crop_box, prepare_tubes,
                                       read_celebvhq_info, read_th1kh_tubes)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_ffmpeg_crop_box_rounds_to_the_chroma_grid():
    assert ffmpeg_crop_box(25, 20, 150, 160, 200, 200) == (24, 20, 150, 160)       # x odd → even (yuv420p)
    assert ffmpeg_crop_box(16, 13, 169, 179, 200, 200) == (16, 12, 168, 178)       # w, h odd → even
    assert ffmpeg_crop_box(10.5, 11.5, 40.0, 40.0, 100, 100) == (10, 12, 40, 40)   # lrint: half to even
    assert ffmpeg_crop_box(90, -5, 40, 40, 100, 100) == (60, 0, 40, 40)            # moved inside the frame
    assert ffmpeg_crop_box(25, 21, 151, 161, 200, 200, hsub=0, vsub=0) == (25, 21, 151, 161)   # rgb: no grid
    with pytest.raises(ValueError, match="does not fit"):
        ffmpeg_crop_box(0, 0, 300, 10, 200, 200)


def test_celebvhq_time_strings_and_square_box():
    assert celebvhq_timestr(2.3) == "00:00:02.29"           # the official truncation: (2.3 - 2) * 100 = 29.99…
    assert celebvhq_timestr(3725.5) == "01:02:05.50"
    x, y, w, h = celebvhq_square((0.05, 0.95, 0.38, 0.87), 360, 640)
    assert w == h == 338 and (x, y) == (231.0, 11.0)         # expand 0.02, round, square about the centre


def test_annotation_errors_name_the_line(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("vid,400,400,0,10,0,0,100\n")
    with pytest.raises(ValueError, match="line 1: 8 fields"):
        read_th1kh_tubes(bad)
    bad.write_text("vid,400,400,0,x,0,0,100,100\n")
    with pytest.raises(ValueError, match="must be integers"):
        read_th1kh_tubes(bad)
    (tmp_path / "i.json").write_text(json.dumps({"clips": {"c": {"ytb_id": "v", "bbox": {}}}}))
    with pytest.raises(ValueError, match="clip 'c' lacks"):
        read_celebvhq_info(tmp_path / "i.json")


def _frames(path: Path) -> list[np.ndarray]:
    from datamodules.video import open_video

    with open_video(path, "pyav") as r:
        return list(r.get_frames(list(range(r.num_frames))))


def _check_golden(out: Path, golden: dict) -> None:
    ours = sorted(n for n in os.listdir(out) if n.endswith(".mp4"))
    assert ours == sorted(golden)
    for name, g in golden.items():
        frames = _frames(out / name)
        assert (len(frames), list(frames[0].shape[:2])) == (g["num_frames"], g["size_hw"]), name
        sums = [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest()[:16] for f in frames]
        assert sums == g["rgb_sha256_16"], name


@pytest.mark.fixtures
def test_th1kh_tubes_bit_exact_to_official_videos_crop(real_fixtures, tmp_path):
    """tests/golden/th1kh/NOTES.md: the official videos_crop.py (lossless output) on three real tiles."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for c in ("r0c0", "r0c1", "r1c2"):
        (raw / f"talkinghead1kh_{c}.mp4").symlink_to(real_fixtures / "clips" / f"talkinghead1kh_{c}.mp4")
    report = prepare_tubes("th1kh", GOLDEN / "th1kh" / "video_tubes_handmade.txt", raw, tmp_path / "out",
                           fmt="png", workers=2, progress=False)
    assert report["summary"]["missing_videos"] == ["talkinghead1kh_missing"]
    _check_golden(tmp_path / "out", json.loads((GOLDEN / "th1kh" / "official_summary.json").read_text())["clips"])
    again = prepare_tubes("th1kh", GOLDEN / "th1kh" / "video_tubes_handmade.txt", raw, tmp_path / "out",
                          fmt="png", progress=False)
    assert again["summary"]["by_status"] == {"done_before": 3, "missing_video": 1}


@pytest.mark.fixtures
def test_celebvhq_clips_bit_exact_to_official_process_ffmpeg(real_fixtures, tmp_path):
    """tests/golden/celebvhq/NOTES.md: the official process_ffmpeg (lossless output) on two real clips."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for vid, name in (("pexelsHand01", "hand_over_face_pexels.mp4"), ("pyfeatFace1", "single_face.mp4")):
        (raw / f"{vid}.mp4").symlink_to(real_fixtures / "clips" / name)
    report = prepare_tubes("celebvhq", GOLDEN / "celebvhq" / "celebvhq_info_handmade.json", raw, tmp_path / "out",
                           fmt="png", progress=False)
    assert report["summary"]["missing_videos"] == ["missingVid01"]
    _check_golden(tmp_path / "out", json.loads((GOLDEN / "celebvhq" / "official_summary.json").read_text())["clips"])
    mp4 = prepare_tubes("celebvhq", GOLDEN / "celebvhq" / "celebvhq_info_handmade.json", raw, tmp_path / "mp4",
                        fmt="mp4", progress=False)
    assert mp4["summary"]["frames_written"] == report["summary"]["frames_written"] == 78 + 45


def _hdtf_annotations(folder: Path) -> Path:
    folder.mkdir()
    (folder / "RD_annotion_time.txt").write_text("pexelsHand01.mp4 00:01-00:04 00:05-00:07\nmissingVid01.mp4 00:00-00:02\n")
    (folder / "RD_crop_wh.txt").write_text("pexelsHand01_0.mp4 230 340 10 340\nmissingVid01_0.mp4 0 100 0 100\n")
    (folder / "RD_resolution.txt").write_text("pexelsHand01.mp4 720\nmissingVid01.mp4 720\n")
    for sub in ("WDA", "WRA"):
        for k in ("annotion_time", "crop_wh", "resolution"):
            (folder / f"{sub}_{k}.txt").write_text("")
    return folder


def test_hdtf_published_annotations_parse_and_match_their_pins():
    from datamodules.prepare.tubes import HDTF_ANNOTATIONS_SHA256, check_pins, read_hdtf

    official = Path(os.environ.get("PORTRAITLAB_HDTF_ANNOTATIONS", "HDTF_dataset"))
    if not official.is_dir():
        pytest.skip("needs the HDTF repo's HDTF_dataset/ folder (set PORTRAITLAB_HDTF_ANNOTATIONS)")
    tubes = read_hdtf(official)
    assert len(tubes) == 421 and tubes[0].name == "Radio1/Radio1_0.mp4"
    assert tubes[0].box == (720, 466, 0, 535, 535) and tubes[0].seconds == (20, 95)
    assert all(v["ok"] for v in check_pins(official, HDTF_ANNOTATIONS_SHA256).values())


@pytest.mark.fixtures
def test_hdtf_clip_from_handmade_annotations(real_fixtures, tmp_path):
    """No official HDTF processing code exists (its README describes the rule): span [1 s, 4 s) of a 23.976 fps
    clip = frames 24 … 95; the crop_wh window given at 720 p, scaled to the 360 p file, resized to 512²; the second
    span has no crop window (not a dataset clip); a missing video is reported; the pins flag edited files."""
    import cv2

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "pexelsHand01.mp4").symlink_to(real_fixtures / "clips" / "hand_over_face_pexels.mp4")
    ann = _hdtf_annotations(tmp_path / "HDTF_dataset")
    report = prepare_tubes("hdtf", ann, raw, tmp_path / "out", fmt="png", progress=False)
    assert report["summary"]["by_status"] == {"missing_video": 1, "written": 1}
    assert report["summary"]["annotations_match_pins"] is False
    frames = _frames(tmp_path / "out" / "pexelsHand01" / "pexelsHand01_0.mp4")
    src = _frames(real_fixtures / "clips" / "hand_over_face_pexels.mp4")
    assert len(frames) == 72 and frames[0].shape == (512, 512, 3)
    want = cv2.resize(np.ascontiguousarray(src[24][4:174, 114:284]), (512, 512), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(frames[0], want)   # x, y = lrint(115, 5) on the even grid; 170² window
