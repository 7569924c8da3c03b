"""prepare crop: tracking / box geometry units, then real clips (a cut to a no-face animation, a talking-head tile)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from datamodules.prepare.crop import CropConfig, crop_dataset, crop_frame, segment_box, track_tubes

# small + fast: detection at 320 px on every 4th frame, 64–96² ultrafast output
FAST = dict(det_stride=4, det_max_side=320, det_min_side=320, resolution=96, preset="ultrafast", min_frames=8)


def _box(cx, cy, s):
    return np.array([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], np.float32)


def test_track_tubes_gap_drift_and_loss():
    cfg = CropConfig(max_gap=1, min_iou_initial=0.25, track_iou=0.3)
    dets = [(0, [_box(50, 50, 40)]), (3, [_box(52, 50, 40), _box(150, 50, 80)]),  # the tracked face, not the bigger
            (6, []),                                                              # one miss: tolerated
            (9, [_box(54, 51, 40)]),
            (12, [_box(66, 52, 40)]), (15, [_box(78, 52, 40)]),                   # drifts: IoU(first) < 0.25
            (18, []), (21, []),                                                   # lost (2 misses > max_gap)
            (24, [_box(150, 150, 30)])]                                           # someone else: a new tube
    tubes = track_tubes(dets, cfg)
    assert [t.frames for t in tubes] == [[0, 3, 9, 12], [15], [24]]
    assert [t.drift_split for t in tubes] == [False, True, False]
    # the first tube followed the small face at 50, not the larger one at 150
    assert all(abs((b[0] + b[2]) / 2 - 55) < 15 for b in tubes[0].boxes)


def test_segment_box_square_inside_or_padded():
    cfg = CropConfig(scale=1.5, shift_up=0.0)
    box, padded = segment_box([_box(100, 80, 40), _box(104, 80, 40)], (200, 300), cfg)
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0 == round(1.5 * 40 + 4)  # scale × median side + the motion extent
    assert not padded and x0 >= 0 and y0 >= 0 and x1 <= 300 and y1 <= 200
    assert abs((x0 + x1) / 2 - 102) <= 1 and abs((y0 + y1) / 2 - 80) <= 1
    # near the border the square shifts inside the frame rather than padding
    box, padded = segment_box([_box(10, 10, 40)], (200, 300), cfg)
    assert box[:2] == [0, 0] and not padded
    # larger than the frame's height: centred vertically and padded
    box, padded = segment_box([_box(150, 100, 180)], (200, 300), cfg)
    assert padded and box[1] < 0 and box[3] > 200 and box[3] - box[1] == 270
    frame = np.full((200, 300, 3), 255, np.uint8)
    out = crop_frame(frame, box, 90)
    assert out.shape == (90, 90, 3)
    assert out[0].max() == 0 and out[-1].max() == 0 and out[45, 45].min() == 255  # black padding, white frame


@pytest.mark.fixtures
def test_crop_face_then_noface_keeps_face_reports_rest(real_fixtures, tmp_path):
    src = real_fixtures / "clips" / "face_then_noface.mov"  # a face until frame 71, then a cut to an animation
    report = crop_dataset(src, tmp_path, CropConfig(**FAST), progress=False)
    (entry,) = report["clips"]
    assert entry["status"] == "ok" and entry["num_frames"] == 169
    kept = [s for s in entry["segments"] if s["kept"]]
    assert len(kept) == 1
    start, end = kept[0]["frames"]
    assert start == 0 and 64 <= end <= 73                      # the face part (±1 detection stride)
    assert entry["frames_without_face"] == 169 - end            # the animation is cut and counted
    assert entry["no_face_ranges"] == [[end, 169]] and "no_face" in entry["reasons"]
    # the written clip: the nested layout, sidecar, exact frame count, and a face centred in it
    out = tmp_path / "face_then_noface" / "face_then_noface" / "face_then_noface_seg00.mp4"
    side = json.loads(out.with_name("face_then_noface_seg00.crop.json").read_text())
    assert side["frames"] == [start, end] and side["box"] == kept[0]["box"] and side["source"] == str(src)
    x0, y0, x1, y1 = side["box"]
    assert x1 - x0 == y1 - y0 and 0 <= x0 and x1 <= 960 and 0 <= y0 and y1 <= 540
    from datamodules.face import get_face_detector
    from datamodules.video import open_video

    with open_video(out) as r:
        assert r.num_frames == end - start and r.size == (96, 96)
        frame = r.get_frames([r.num_frames // 2])[0]
    faces = get_face_detector("dlib").detect(frame, min_side=320)
    assert len(faces) == 1
    cx, cy = faces[0].center
    assert abs(cx - 48) < 14 and abs(cy - 48) < 20 and 0.35 < faces[0].width / 96 < 0.8
    saved = json.loads((tmp_path / "crop_report.json").read_text())
    assert saved["summary"]["frames_without_face"] == entry["frames_without_face"]


@pytest.mark.fixtures
def test_crop_talkinghead_tile_cli_and_resume(real_fixtures, tmp_path):
    from datamodules.prepare.__main__ import main

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real_fixtures / "clips" / "talkinghead1kh_r0c1.mp4", src / "tile.mp4")  # tmp copy, not the repo
    dst = tmp_path / "dst"
    args = ["crop", str(src), str(dst), "--det-stride", "4", "--resolution", "64", "--preset", "ultrafast",
            "--min-frames", "8", "--no-progress"]
    assert main(args) == 0
    out = dst / "tile" / "tile" / "tile_seg00.mp4"
    from datamodules.video import open_video

    with open_video(out) as r:
        assert r.num_frames == 20 and r.size == (64, 64)  # the whole 20-frame tile has a face
    report = json.loads((dst / "crop_report.json").read_text())
    assert report["summary"]["segments_kept"] == 1 and report["summary"]["frames_without_face"] == 0
    mtime = out.stat().st_mtime_ns
    again = crop_dataset(src, dst, CropConfig(**FAST), progress=False)  # resume: already done, nothing rewritten
    assert again["clips"][0]["resumed"] and out.stat().st_mtime_ns == mtime
    # the output root is a nested-layout dataset the data module can read
    from datamodules.layouts import discover

    recs = discover(dst, "auto")
    assert [(r.identity, r.clip_id) for r in recs] == [("tile", "tile/tile/tile_seg00")]


def test_crop_no_face_clip_is_reported_not_written(tmp_path):
    from datamodules.prepare.encode import encode_mp4

    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    encode_mp4([(rng.random((48, 64, 3)) * 255).astype(np.uint8) for _ in range(10)], src / "noise.mp4", 10,
               preset="ultrafast")
    report = crop_dataset(src, tmp_path / "dst", CropConfig(**FAST), progress=False)
    (entry,) = report["clips"]
    assert entry["status"] == "no_segment" and entry["frames_without_face"] == 10
    assert "no_face_at_all" in entry["reasons"] and not list((tmp_path / "dst").rglob("*.mp4"))


class _FakeReader:
    """A 40-frame 100×160 clip whose frame t carries t in its pixels."""

    num_frames, size, fps = 40, (100, 160), 10.0

    def iter_frames(self, start=0, stop=None, stride=1):
        for t in range(start, stop or self.num_frames, stride):
            yield np.full((*self.size, 3), t, np.uint8)


class _FakeDetector:
    """A 30-px face at x≈60 in frames 0–21 and again 30–39 (gone in 22–29)."""

    def detect(self, frame, **kw):
        from datamodules.face import FaceBox

        t = int(frame[0, 0, 0])
        return [FaceBox(45, 30, 75, 60, 2.0)] if t < 22 or t >= 30 else []


def test_plan_clip_segments_strides_and_limits():
    from datamodules.prepare.crop import plan_clip

    cfg = CropConfig(det_stride=3, max_gap=1, min_frames=8, min_face=0.1, scale=2.0, shift_up=0.0)
    plan = plan_clip(_FakeReader(), cfg, detector=_FakeDetector())
    # samples 0,3,…,39: faces at 0–21 and 30–39; 24 and 27 miss twice (> max_gap) → two segments
    assert [s["frames"] for s in plan["segments"]] == [[0, 22], [30, 40]]
    assert plan["no_face_ranges"] == [[22, 30]] and plan["frames_without_face"] == 8
    assert all(s["kept"] for s in plan["segments"]) and plan["segments"][0]["box"] == [30, 15, 90, 75]
    # long segments split into max_segment_frames pieces; the 2-frame remainder is too short for min_frames
    plan = plan_clip(_FakeReader(), CropConfig(det_stride=3, min_frames=8, max_segment_frames=10),
                     detector=_FakeDetector())
    assert [(s["frames"], s["kept"]) for s in plan["segments"]] == [([0, 10], True), ([10, 20], True),
                                                                    ([20, 22], False), ([30, 40], True)]
    assert plan["segments"][2]["reason"].startswith("too_short")
    # a larger gap tolerance bridges the miss: one segment over the whole clip
    plan = plan_clip(_FakeReader(), CropConfig(det_stride=3, max_gap=3, min_frames=8), detector=_FakeDetector())
    assert [s["frames"] for s in plan["segments"]] == [[0, 40]] and plan["frames_without_face"] == 0


@pytest.mark.slow
@pytest.mark.fixtures
def test_crop_all_fixture_clips_default_config(real_fixtures, tmp_path):
    """The default configuration (256², stride 3) over every fixture clip, two worker processes."""
    report = crop_dataset(real_fixtures / "clips", tmp_path, CropConfig(), workers=2, progress=False)
    by_clip = {e["clip"]: e for e in report["clips"]}
    assert len(by_clip) == 11 and report["summary"]["errors"] == 0
    assert by_clip["single_face"]["frames_kept"] == 72 and by_clip["hand_over_face_pexels"]["frames_kept"] == 204
    assert by_clip["face_then_noface"]["frames_without_face"] >= 90
    # HOG finds a face in at least six of the eight 200² TalkingHead-1KH tiles over their 20 frames
    tiles = [e for c, e in by_clip.items() if c.startswith("talkinghead1kh")]
    assert sum(e["frames_kept"] == 20 for e in tiles) >= 6
    from datamodules.layouts import discover

    assert len(discover(tmp_path)) == report["summary"]["segments_kept"]
