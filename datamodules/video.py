"""Frame access for clips: ``open_video(path, decoder) -> VideoReader`` (the frames x_t of a clip, t = 0..N-1).

Three readers share one interface:

* ``PyAVReader`` — random access by *seeking to the nearest keyframe at or before the first wanted frame* and
  decoding forward only as far as the last wanted frame of that run (a fresh seek when the next wanted frame lies
  beyond a later keyframe). Frame indices are derived from a demux-only packet index (sorted presentation
  timestamps, keyframe flags; built once per reader, no decoding), so ``num_frames`` is exact even when the
  container's ``stream.frames`` is 0 and pts → index is exact for variable frame rate files.
* ``DecordReader`` — decord2's ``VideoReader`` (it does its own keyframe seeking).
* ``FrameFolderReader`` — a folder of PNG/JPG frames (sorted by name) behind the same interface.

Orientation is normalised once, here, for every decoder: a clip whose container carries a display matrix
(phone videos: "rotate" 90/180/270) is returned as it is meant to be displayed — ``PyAVReader`` rotates the
decoded frames by the stream's rotation (``VideoFrame.rotation``, counter-clockwise, a multiple of 90°), and
``open_video(..., "decord")`` reads such a clip with ``PyAVReader`` (decord2 3.4 mis-sizes rotated frames: its
``get_batch`` fails, "from_size == to_size"), so both decoders give identical frames. ``size`` is the displayed
(height, width).

Readers hold open file handles: never pickle them. Datasets open them lazily per process (see ``ReaderCache``),
so each DataLoader worker gets its own decoders.
"""
from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
DECODERS = ("pyav", "decord")
_INDEX_CACHE: dict = {}       # (path, size, mtime_ns) -> (sorted pts, pts -> index, keyframe indices), per process
_INDEX_CACHE_SIZE = 4096


class VideoReader:
    """Base interface: ``num_frames``, ``fps``, ``size`` = (height, width), ``get_frames``, ``iter_frames``."""

    path: str
    num_frames: int
    fps: float
    size: tuple[int, int]

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:  # pragma: no cover - interface
        """Frames at ``indices`` (any order, repeats allowed) as N×H×W×3 uint8 RGB."""
        raise NotImplementedError

    def iter_frames(self, start: int = 0, stop: Optional[int] = None, stride: int = 1) -> Iterator[np.ndarray]:
        """Sequential frames start, start+stride, … < stop (default: the end) as H×W×3 uint8, decoded once."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        for chunk_start in range(start, stop, 32 * stride):
            idx = list(range(chunk_start, min(stop, chunk_start + 32 * stride), stride))
            yield from self.get_frames(idx)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        raise TypeError(f"{type(self).__name__} holds an open decoder and is not picklable; open it per worker")

    def _check(self, indices: Sequence[int]) -> list[int]:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if i < 0 or i >= self.num_frames]
        if bad:
            raise IndexError(f"{self.path}: frame indices {bad[:4]} outside [0, {self.num_frames})")
        return idx


# ---------------------------------------------------------------------------------------------------------------
class PyAVReader(VideoReader):
    """PyAV (FFmpeg) reader with keyframe seeking. ``threads`` > 0 enables FFmpeg frame threading."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        import av

        self.path = str(path)
        self.container = av.open(self.path)
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{self.path}: no video stream")
        self.stream = self.container.streams.video[0]
        if threads:
            self.stream.thread_type = "AUTO"
            self.stream.thread_count = threads
        self._build_index()
        cc = self.stream.codec_context
        self.rotation = self._probe_rotation()
        self.size = (int(cc.width), int(cc.height)) if self.rotation in (90, 270) else (int(cc.height), int(cc.width))
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        if rate:
            self.fps = float(rate)
        elif self.num_frames > 1 and self._pts[-1] > self._pts[0]:
            self.fps = (self.num_frames - 1) / float((self._pts[-1] - self._pts[0]) * self.stream.time_base)
        else:
            self.fps = 25.0
        self._next_index: Optional[int] = None  # index of the next frame the decoder will return (None: unknown)
        self._decoder = None
        self.frames_decoded = 0  # counter (tests and benchmarks: random access must not decode everything)

    def _build_index(self) -> None:
        """Demux (no decoding) to list every frame's pts and the keyframes: exact count, exact pts → index.
        Cached per process by path + size + mtime, so re-opening a clip (training visits many) does not re-read it."""
        st = os.stat(self.path)
        key = (self.path, st.st_size, st.st_mtime_ns)
        cached = _INDEX_CACHE.get(key)
        if cached is None:
            pts, keys = [], []
            for packet in self.container.demux(self.stream):
                if packet.size == 0:
                    continue  # flush packet
                t = packet.pts if packet.pts is not None else packet.dts
                if t is None:
                    continue
                pts.append(int(t))
                if packet.is_keyframe:
                    keys.append(int(t))
            order = sorted(pts)
            lookup = {p: i for i, p in enumerate(order)}
            cached = (order, lookup, sorted({lookup[k] for k in keys}) or ([0] if order else []))
            if len(_INDEX_CACHE) >= _INDEX_CACHE_SIZE:
                _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
            _INDEX_CACHE[key] = cached
            if order:
                self.container.seek(0, stream=self.stream)
        self._pts, self._pts_to_index, self._keyframes = cached
        self.num_frames = len(self._pts)
        self.declared_frames = int(self.stream.frames or 0)

    def _probe_rotation(self) -> int:
        """The display rotation (0/90/180/270, counter-clockwise) of the first frame; cached like the index."""
        st = os.stat(self.path)
        key = ("rotation", self.path, st.st_size, st.st_mtime_ns)
        if key not in _INDEX_CACHE:
            rotation = 0
            if self.num_frames:
                for frame in self.container.decode(self.stream):
                    rotation = int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) * 90 % 360
                    break
                self.container.seek(self._pts[0] if self._pts else 0, stream=self.stream)
            _INDEX_CACHE[key] = rotation
        return _INDEX_CACHE[key]

    def _to_rgb(self, frame) -> np.ndarray:
        img = frame.to_ndarray(format="rgb24")
        return np.ascontiguousarray(np.rot90(img, self.rotation // 90)) if self.rotation else img

    def _index_of(self, frame) -> int:
        t = frame.pts if frame.pts is not None else frame.dts
        if t is None:
            return -1
        i = self._pts_to_index.get(int(t))
        if i is None:  # timestamps rewritten by the decoder: nearest indexed pts
            j = bisect.bisect_left(self._pts, int(t))
            cands = [k for k in (j - 1, j) if 0 <= k < len(self._pts)]
            i = min(cands, key=lambda k: abs(self._pts[k] - int(t))) if cands else -1
        return i

    def _keyframe_before(self, index: int) -> int:
        k = bisect.bisect_right(self._keyframes, index) - 1
        return self._keyframes[max(k, 0)]

    def _seek(self, index: int) -> None:
        key = self._keyframe_before(index)
        self.container.seek(self._pts[key], stream=self.stream, backward=True, any_frame=False)
        self._decoder = self.container.decode(self.stream)
        self._next_index = None

    def _decode_run(self, wanted: list[int], out: dict[int, np.ndarray]) -> None:
        """Decode forward covering the sorted indices ``wanted``: one keyframe seek unless the decoder already stands
        before ``wanted[0]`` with no keyframe in between; a fresh seek whenever the next wanted frame lies beyond
        a keyframe that is still ahead (seeking is then cheaper than decoding the gap)."""
        k = 0  # position in `wanted` of the next frame to collect
        while k < len(wanted):
            first = wanted[k]
            pos = self._next_index
            if pos is None or pos > first or self._keyframe_before(first) > pos:
                self._seek(first)
            jump = False
            for frame in self._decoder:
                self.frames_decoded += 1
                i = self._index_of(frame)
                self._next_index = i + 1
                if i == wanted[k]:
                    out[i] = self._to_rgb(frame)
                    k += 1
                elif i > wanted[k]:  # a wanted frame never came out (odd timestamps): get_frames falls back
                    while k < len(wanted) and wanted[k] < i:
                        k += 1
                    if k < len(wanted) and wanted[k] == i:
                        out[i] = self._to_rgb(frame)
                        k += 1
                if k >= len(wanted):
                    return
                if self._keyframe_before(wanted[k]) > i + 1:
                    jump = True
                    break
            if not jump:
                self._next_index = None  # exhausted: the decoder must be re-seeked next time
                return

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        if not idx:
            h, w = self.size
            return np.zeros((0, h, w, 3), np.uint8)
        wanted = sorted(set(idx))
        out: dict[int, np.ndarray] = {}
        self._decode_run(wanted, out)
        missing = [i for i in wanted if i not in out]
        if missing:  # open GOP / odd timestamps: decode again from an earlier keyframe, then from the start
            for fallback in (self._keyframe_before(max(missing[0] - 1, 0)), 0):
                self.container.seek(self._pts[fallback], stream=self.stream, backward=True, any_frame=False)
                self._decoder, self._next_index = self.container.decode(self.stream), None
                for frame in self._decoder:
                    i = self._index_of(frame)
                    if i in missing and i not in out:
                        out[i] = self._to_rgb(frame)
                    if i >= missing[-1]:
                        break
                self._next_index = None
                missing = [i for i in missing if i not in out]
                if not missing:
                    break
        if missing:
            raise RuntimeError(f"{self.path}: could not decode frames {missing[:4]} (truncated or corrupt file?)")
        return np.stack([out[i] for i in idx])

    def iter_frames(self, start: int = 0, stop: Optional[int] = None, stride: int = 1) -> Iterator[np.ndarray]:
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        if start >= stop:
            return
        self._seek(start)
        dec = self._decoder
        self._decoder, self._next_index = None, None  # this generator owns the decoder now
        for frame in dec:
            i = self._index_of(frame)
            if i >= stop:
                break
            if i >= start and (i - start) % stride == 0:
                yield self._to_rgb(frame)
        self._decoder, self._next_index = None, None

    def close(self) -> None:
        if getattr(self, "container", None) is not None:
            self.container.close()
            self.container = None


# ---------------------------------------------------------------------------------------------------------------
class DecordReader(VideoReader):
    """decord2 reader (``decord.VideoReader``; its ``get_batch`` seeks to keyframes itself)."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        import decord

        self.path = str(path)
        self.vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=threads)
        self.num_frames = len(self.vr)
        if self.num_frames == 0:
            raise ValueError(f"{self.path}: no frames")
        h, w = self.vr[0].shape[:2]
        self.vr.seek(0)
        self.size = (int(h), int(w))
        self.fps = float(self.vr.get_avg_fps() or 25.0)

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        if not idx:
            return np.zeros((0, *self.size, 3), np.uint8)
        return self.vr.get_batch(idx).asnumpy()

    def close(self) -> None:
        self.vr = None


# ---------------------------------------------------------------------------------------------------------------
class FrameFolderReader(VideoReader):
    """A clip stored as a folder of images (``00000.png`` …), sorted by file name."""

    def __init__(self, path: str | os.PathLike, fps: float = 25.0):
        self.path = str(path)
        self.files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        self.num_frames = len(self.files)
        if not self.files:
            raise ValueError(f"{self.path}: no PNG/JPG frames")
        self.fps = float(fps)
        self.size = self._read(0).shape[:2]

    def _read(self, i: int) -> np.ndarray:
        import cv2

        img = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise RuntimeError(f"{self.files[i]}: unreadable image")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        if not idx:
            return np.zeros((0, *self.size, 3), np.uint8)
        cache = {i: self._read(i) for i in sorted(set(idx))}
        return np.stack([cache[i] for i in idx])


# ---------------------------------------------------------------------------------------------------------------
def display_rotation(path: str | os.PathLike) -> int:
    """The clip's display rotation in degrees (0/90/180/270, counter-clockwise), from its first frame's display
    matrix; cached per path + size + mtime."""
    import av

    st = os.stat(path)
    key = ("rotation", str(path), st.st_size, st.st_mtime_ns)
    if key not in _INDEX_CACHE:
        rotation = 0
        with av.open(str(path)) as container:   # one frame decoded, no demux index
            if container.streams.video:
                for frame in container.decode(container.streams.video[0]):
                    rotation = int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) * 90 % 360
                    break
        _INDEX_CACHE[key] = rotation
    return _INDEX_CACHE[key]


def open_video(path: str | os.PathLike, decoder: str = "pyav", threads: int = 0) -> VideoReader:
    """Open a clip: a folder of frames, or a video file with ``decoder`` ∈ {pyav, decord}."""
    p = Path(path)
    if p.is_dir():
        return FrameFolderReader(p)
    if decoder == "pyav":
        return PyAVReader(p, threads=threads)
    if decoder == "decord":
        if display_rotation(p):   # decord2 cannot read rotated clips (see the module doc): same frames via PyAV
            return PyAVReader(p, threads=threads)
        return DecordReader(p, threads=threads)
    raise ValueError(f"decoder={decoder!r} is not one of {', '.join(DECODERS)}")


@runtime_checkable
class ClipSource(Protocol):
    """Where clips come from. The local implementation is ``datamodules.layouts.LocalClipSource``;
    ``datamodules.shards.ShardClipSource`` (layout=shards) implements the same members:

    * ``records: list[ClipRecord]`` — every clip (``num_frames`` filled in when known);
    * ``open(record) -> VideoReader`` — called lazily inside each DataLoader worker;
    * ``load_meta(record) -> dict | None`` — optional per-frame arrays (``keypoints`` N×K×2, ``masks_hand`` /
      ``masks_face`` N×H×W), in the pixel frame of the stored video;
    * ``load_crop(record) -> [x0, y0, x1, y1] | None`` — the per-clip crop box (crop=meta).
    """

    records: list

    def open(self, record) -> VideoReader: ...

    def load_meta(self, record) -> Optional[dict]: ...

    def load_crop(self, record) -> Optional[list[float]]: ...


class ReaderCache:
    """A small per-process LRU of open readers. Emptied on pickling and when the process id changes (fork), so
    every DataLoader worker opens its own decoders lazily."""

    def __init__(self, source: ClipSource, capacity: int = 8):
        self.source = source
        self.capacity = capacity
        self._pid = os.getpid()
        self._readers: OrderedDict = OrderedDict()

    def get(self, record) -> VideoReader:
        if self._pid != os.getpid():
            self._readers, self._pid = OrderedDict(), os.getpid()
        key = str(record.path)
        reader = self._readers.pop(key, None)
        if reader is None:
            reader = self.source.open(record)
            while len(self._readers) >= self.capacity:
                _, old = self._readers.popitem(last=False)
                old.close()
        self._readers[key] = reader
        return reader

    def drop(self, record) -> None:
        reader = self._readers.pop(str(record.path), None)
        if reader is not None:
            reader.close()

    def __getstate__(self):
        return {"source": self.source, "capacity": self.capacity}

    def __setstate__(self, state):
        self.__init__(state["source"], state["capacity"])
