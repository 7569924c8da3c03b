"""Readers: random access equals sequential decode, decodes only from the nearest keyframe, counts frames."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from datamodules.video import FrameFolderReader, PyAVReader, open_video
from media import pattern, write_frames, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # B-frames (bf=2) and a keyframe every 5 frames: pts order != decode order, several GOPs
    return write_video(tmp_path_factory.mktemp("v") / "a.mp4", num_frames=30, size=(48, 64), gop=5)


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_random_access_matches_sequential(clip, decoder):
    r = open_video(clip, decoder)
    assert (r.num_frames, r.size) == (30, (48, 64))
    assert r.fps == pytest.approx(10.0)
    seq = np.stack(list(r.iter_frames()))
    assert seq.shape == (30, 48, 64, 3) and seq.dtype == np.uint8
    for idx in ([0], [29], [7, 3, 3, 20], [12, 13, 14], [28, 1], [4, 5, 6, 25, 26]):
        np.testing.assert_array_equal(r.get_frames(idx), seq[idx])
    np.testing.assert_array_equal(np.stack(list(r.iter_frames(3, 20, 4))), seq[3:20:4])
    # frames are the pattern we encoded (H.264 at crf 10: small error), in the right order
    refs = np.stack([pattern(j, 48, 64) for j in range(30)]).astype(int)
    for i in (0, 5, 17, 29):
        errs = np.abs(refs - seq[i]).mean(axis=(1, 2, 3))
        assert errs.argmin() == i and errs[i] < 3


def test_decoders_agree(clip):
    a = np.stack(list(open_video(clip, "pyav").iter_frames()))
    b = np.stack(list(open_video(clip, "decord").iter_frames()))
    assert np.abs(a.astype(int) - b).max() <= 2


def test_seeks_to_nearest_keyframe(clip):
    r = PyAVReader(clip)
    assert r._keyframes == [0, 5, 10, 15, 20, 25]
    r.get_frames([21, 23])                    # keyframe 20 → decode 20..23
    assert r.frames_decoded == 4
    r.frames_decoded = 0
    r.get_frames([2, 27])                     # two runs: 0..2 and 25..27, never the 22 frames between
    assert r.frames_decoded == 6
    r.frames_decoded = 0
    r.get_frames([28, 29])                    # continues forward from where the decoder stands
    assert r.frames_decoded <= 2


def test_frame_count_without_container_count(clip, monkeypatch):
    """stream.frames may be 0 (e.g. mkv/webm): the demux index still counts the frames exactly."""
    import av

    out = clip.with_suffix(".mkv")
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        s = src.streams.video[0]
        o = dst.add_stream_from_template(s)
        for pkt in src.demux(s):
            if pkt.dts is None:
                continue
            pkt.stream = o
            dst.mux(pkt)
    r = PyAVReader(out)
    assert r.declared_frames == 0 and r.num_frames == 30
    ref = np.stack(list(PyAVReader(clip).iter_frames()))
    np.testing.assert_array_equal(r.get_frames([11, 3]), ref[[11, 3]])


def test_frame_folder(tmp_path):
    d = write_frames(tmp_path / "clip", num_frames=6)
    r = open_video(d)
    assert isinstance(r, FrameFolderReader) and r.num_frames == 6 and r.size == (48, 64)
    np.testing.assert_array_equal(r.get_frames([4, 1]), np.stack([pattern(4, 48, 64), pattern(1, 48, 64)]))
    assert len(list(r.iter_frames(0, 6, 2))) == 3


def test_out_of_range_and_not_picklable(clip):
    r = open_video(clip)
    with pytest.raises(IndexError):
        r.get_frames([30])
    with pytest.raises(TypeError):
        pickle.dumps(r)


@pytest.mark.fixtures
def test_real_clips_random_access(real_fixtures):
    """Real H.264 (and a .mov) with B-frames: random access returns the sequential decode's pixels."""
    for name in ("single_face.mp4", "talkinghead1kh_r0c0.mp4"):
        r = open_video(real_fixtures / "clips" / name)
        seq = np.stack(list(r.iter_frames()))
        assert len(seq) == r.num_frames
        n = r.num_frames
        idx = [n - 1, n // 2, 1, n // 2 + 1]
        np.testing.assert_array_equal(r.get_frames(idx), seq[idx])


def _write_rotated(path, degrees: int, num_frames: int = 14, size=(32, 64)):
    """An H.264 clip whose container carries a display matrix (what phones write), set through PyAV."""
    import av

    h, w = size
    frames = [pattern(j, h, w) for j in range(num_frames)]
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=10)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"crf": "10", "g": "5"}
        st.set_display_rotation(degrees)
        for img in frames:
            for packet in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return np.stack(frames)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_clip_gives_identical_displayed_frames_under_decord_and_pyav(tmp_path, degrees):
    """Rotation metadata is applied once for every decoder (PyAV alone returns the stored frames; decord2 fails on
    the clip — `from_size == to_size` — unless the reader handles it)."""
    from datamodules.video import display_rotation

    raw = _write_rotated(tmp_path / "r.mp4", degrees)
    assert display_rotation(tmp_path / "r.mp4") == degrees
    shown = np.stack([np.rot90(f, degrees // 90) for f in raw]).astype(int)
    got = {}
    for decoder in ("pyav", "decord"):
        r = open_video(tmp_path / "r.mp4", decoder)
        assert r.size == shown.shape[1:3] and r.num_frames == len(raw)
        got[decoder] = r.get_frames([0, 7, 3, 13])
        np.testing.assert_array_equal(np.stack(list(r.iter_frames())), r.get_frames(range(len(raw))))
        r.close()
    np.testing.assert_array_equal(got["pyav"], got["decord"])
    assert np.abs(got["pyav"].astype(int) - shown[[0, 7, 3, 13]]).mean() < 4     # as displayed (codec error only)


def test_unrotated_clip_still_uses_decord(clip):
    from datamodules.video import DecordReader, display_rotation

    assert display_rotation(clip) == 0 and isinstance(open_video(clip, "decord"), DecordReader)
