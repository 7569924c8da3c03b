"""litdata shards of clips (layout=shards): one item = one clip x^(c), stored as its encoded video bytes.

Writing (``python -m datamodules.prepare shards ROOT OUT``, or ``write_shards``): every clip that
``datamodules.layouts.discover`` finds under ROOT becomes one ``litdata.optimize`` item::

    {"video_bytes": <the file's bytes, as is>, "meta_npz": <root/meta/<stem>.npz bytes or b"">,
     "info": <JSON text: identity, video, clip_id, split_hint, num_frames, fps, height, width, container,
              crop_json (the .crop.json sidecar text or ""), source_path>}

(Text travels as one JSON string: litdata serializes a plain string that names an existing file as that file's
*content*, e.g. a video, so paths and ids must never be top-level strings.)
Video files are stored byte for byte (no re-encoding: decoding a shard gives exactly the frames of the local
file). Frame folders are encoded to mp4 with ``libx264rgb`` at ``crf=0`` (lossless RGB). After writing, the
shards are read back once to build ``OUT/portraitlab_clips.json`` (item index → identity / video / clip id /
num_frames / fps), so listing the clips of a remote dataset costs one small download, not every chunk.

Reading (``ShardClipSource(url_or_dir)``): the ``datamodules.video.ClipSource`` interface — ``records`` (a list of
``ShardClipRecord``), ``open(record) -> VideoReader`` (random access PyAV decoding from the in-memory bytes with
the same keyframe-seeking reader as local files), ``load_meta``, ``load_crop``. The litdata ``StreamingDataset`` is
opened lazily per process, so the source pickles into DataLoader workers; a ``s3://`` (or ``gs://``, ``r2://``)
URL is streamed through litdata's downloaders into ``cache_dir`` (default ``$PORTRAITLAB_SHARD_CACHE``, else
litdata's own).

Object storage (``data=shards data.root=s3://bucket/prefix``). What researchers upload is exactly the folder that
``python -m datamodules.prepare shards ROOT OUT`` wrote, under one prefix::

    s3://bucket/prefix/index.json                 litdata's chunk index (written by litdata.optimize)
    s3://bucket/prefix/chunk-<worker>-<n>.bin     the chunks (item = one clip: video bytes, meta npz, info JSON)
    s3://bucket/prefix/portraitlab_clips.json     the clip index (ids, frame counts): setup() reads only this file

e.g. ``aws s3 sync OUT s3://bucket/prefix`` (or ``upload_shards(OUT, "s3://bucket/prefix")``), or write straight to
the URL: ``write_shards(ROOT, "s3://bucket/prefix")``. Credentials come from the environment as for any boto3
client — ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), ``AWS_PROFILE``, or the
instance role — and an S3-compatible store (MinIO, Ceph, R2 with s3://) is reached with ``AWS_ENDPOINT_URL``
(plus ``AWS_DEFAULT_REGION`` when the store needs one). Nothing secret goes into configs.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from datamodules.layouts import ClipRecord, discover
from datamodules.video import PyAVReader, VideoReader

INDEX_NAME = "portraitlab_clips.json"
INDEX_VERSION = 1
_REMOTE_PREFIXES = ("s3://", "gs://", "r2://", "azure://", "hf://")


def is_remote(url: str | os.PathLike) -> bool:
    return str(url).startswith(_REMOTE_PREFIXES)


# ----------------------------------------------------------------------------------------------------- reading
class BytesPyAVReader(PyAVReader):
    """``PyAVReader`` over an in-memory encoded video: the same demux index, keyframe seeking and frame indexing
    as local files (it *is* ``PyAVReader``), reading the bytes from an anonymous in-RAM file (``memfd``; a
    deleted temporary file where memfd does not exist), so FFmpeg does native, seekable I/O."""

    def __init__(self, data: bytes | memoryview, name: str = "<bytes>", threads: int = 0):
        self._tmp = None
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("portraitlab-clip", 0)
            try:
                _write_all(fd, data)
                super().__init__(f"/proc/self/fd/{fd}", threads=threads)  # opens its own handle on the memfd
            finally:
                os.close(fd)  # the container's handle keeps the memory alive until close()
        else:  # pragma: no cover - non-Linux
            self._tmp = tempfile.NamedTemporaryFile(suffix=".mp4")
            self._tmp.write(bytes(data))
            self._tmp.flush()
            super().__init__(self._tmp.name, threads=threads)
        self.path = name

    def close(self) -> None:
        super().close()
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def open_video_bytes(data: bytes | memoryview, name: str = "<bytes>", decoder: str = "pyav",
                     threads: int = 0) -> VideoReader:
    """A ``VideoReader`` over encoded video bytes (PyAV; ``decoder`` is accepted for symmetry with ``open_video``)."""
    if decoder not in ("pyav", "decord"):
        raise ValueError(f"decoder={decoder!r} is not one of pyav, decord")
    return BytesPyAVReader(data, name=name, threads=threads)


@dataclass
class ShardClipRecord(ClipRecord):
    """A clip inside litdata shards: ``index`` is its item index; ``path`` is ``<url>#<index>`` (unique)."""

    index: int = -1


class ShardClipSource:
    """Clips in litdata shards (a local folder or an object-storage URL), ``datamodules.video.ClipSource``.

    ``cache_dir``: where remote chunks are cached (default: litdata's own); ``max_cache_size``: litdata's bound on
    it. ``storage_options``: passed to litdata (credentials, endpoint) for remote URLs.
    """

    def __init__(self, url_or_dir: str | os.PathLike, cache_dir: Optional[str] = None, decoder: str = "pyav",
                 threads: int = 0, storage_options: Optional[dict] = None, max_cache_size: str = "20GB"):
        self.url = str(url_or_dir).rstrip("/")
        self.cache_dir = cache_dir or (os.environ.get("PORTRAITLAB_SHARD_CACHE") if is_remote(self.url) else None)
        self.decoder = decoder
        self.threads = threads
        self.storage_options = dict(storage_options or {})
        self.max_cache_size = max_cache_size
        self._dataset = None
        self._pid = None
        index = self._load_index()
        self.records: list[ShardClipRecord] = [
            ShardClipRecord(path=f"{self.url}#{r['index']}", identity=r["identity"], video=r["video"],
                            clip_id=r["clip_id"], kind="shard", split_hint=r.get("split_hint") or None,
                            num_frames=int(r["num_frames"]), fps=float(r["fps"]), index=int(r["index"]),
                            meta="npz" if r.get("has_meta") else None, crop="json" if r.get("has_crop") else None)
            for r in index["clips"]
        ]

    # -- index / dataset
    def _load_index(self) -> dict:
        if not is_remote(self.url):
            path = Path(self.url) / INDEX_NAME
            if not path.exists():
                if not (Path(self.url) / "index.json").exists():
                    raise FileNotFoundError(f"{self.url} holds no litdata shards (no index.json); write them with "
                                            "`python -m datamodules.prepare shards ROOT OUT`")
                return build_index(self.url)
            return json.loads(path.read_text())
        from litdata.streaming.fs_provider import _get_fs_provider

        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, INDEX_NAME)
            _get_fs_provider(self.url, self.storage_options).download_file(f"{self.url}/{INDEX_NAME}", local)
            return json.loads(Path(local).read_text())

    @property
    def dataset(self):
        """The litdata ``StreamingDataset`` (opened lazily, once per process)."""
        if self._dataset is None or self._pid != os.getpid():
            import litdata

            kw = {"storage_options": self.storage_options} if self.storage_options else {}
            if is_remote(self.url):
                kw["max_cache_size"] = self.max_cache_size
            self._dataset = litdata.StreamingDataset(self.url, cache_dir=self.cache_dir, **kw)
            self._pid = os.getpid()
        return self._dataset

    def item(self, record: ShardClipRecord) -> dict:
        item = self.dataset[record.index]
        clip_id = item_info(item)["clip_id"]
        if clip_id != record.clip_id:
            raise RuntimeError(f"{self.url}: item {record.index} is {clip_id!r}, the index says "
                               f"{record.clip_id!r} (stale {INDEX_NAME}? rewrite the shards)")
        return item

    # -- ClipSource
    def open(self, record: ShardClipRecord) -> VideoReader:
        item = self.item(record)
        return open_video_bytes(item["video_bytes"], name=f"{record.path} ({record.clip_id})",
                                decoder=self.decoder, threads=self.threads)

    def load_meta(self, record: ShardClipRecord) -> Optional[dict]:
        if not record.meta:
            return None
        data = bytes(self.item(record)["meta_npz"])
        with np.load(io.BytesIO(data)) as z:
            return {k: z[k] for k in z.files}

    def load_crop(self, record: ShardClipRecord) -> Optional[list[float]]:
        """The crop box for crop=meta, or None: none stored, or — as ``LocalClipSource.load_crop`` — the sidecar
        names a ``source`` other than the stored clip's original file (``prepare crop`` output, already cropped)."""
        if not record.crop:
            return None
        info = item_info(self.item(record))
        side = json.loads(info["crop_json"])
        src = side.get("source")
        if src is not None and Path(src).resolve() != Path(info["source_path"]).resolve():
            return None
        return [float(v) for v in side["box"]]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_dataset"], state["_pid"] = None, None
        return state

    def __len__(self) -> int:
        return len(self.records)


# ----------------------------------------------------------------------------------------------------- writing
def _clip_item(record: dict) -> dict:
    """litdata ``optimize`` fn: one ClipRecord (as a dict) → one item."""
    from datamodules.video import open_video

    path = Path(record["path"])
    if record.get("kind") == "frames":
        with open_video(path) as reader:
            fps = float(record.get("fps") or reader.fps)
            data = _encode_lossless(reader, fps)
        container = ".mp4"
    else:
        data = path.read_bytes()
        container = path.suffix.lower()
    with open_video_bytes(data, name=str(path)) as reader:  # what the reader will see: count frames exactly
        num_frames, fps, (h, w) = reader.num_frames, reader.fps, reader.size
    meta = Path(record["meta"]).read_bytes() if record.get("meta") else b""
    crop = Path(record["crop"]).read_text() if record.get("crop") else ""
    info = {"identity": record["identity"], "video": record["video"], "clip_id": record["clip_id"],
            "split_hint": record.get("split_hint") or "", "num_frames": int(num_frames), "fps": float(fps),
            "height": int(h), "width": int(w), "container": container, "crop_json": crop, "source_path": str(path)}
    return {"video_bytes": data, "meta_npz": meta, "info": json.dumps(info)}


def upload_shards(out: str | os.PathLike, url: str, storage_options: Optional[dict] = None) -> list[str]:
    """Copy a local shard folder (``write_shards`` output) to ``url`` (``s3://bucket/prefix``), the clip index
    last (a reader never sees an index without its chunks); returns the uploaded keys. Credentials / endpoint from
    the environment (see the module docstring)."""
    from litdata.streaming.fs_provider import _get_fs_provider

    out = Path(out)
    if not (out / "index.json").exists() or not (out / INDEX_NAME).exists():
        raise FileNotFoundError(f"{out} is not a shard folder (needs index.json and {INDEX_NAME}; write it with "
                                "`python -m datamodules.prepare shards ROOT OUT`)")
    if not is_remote(url):
        raise ValueError(f"{url!r} is not an object-storage URL (s3://bucket/prefix)")
    provider = _get_fs_provider(url, dict(storage_options or {}))
    files = sorted(out.glob("chunk-*.bin")) + [out / "index.json", out / INDEX_NAME]
    url = url.rstrip("/")
    for f in files:
        provider.upload_file(str(f), f"{url}/{f.name}")
    return [f.name for f in files]


def item_info(item: dict) -> dict:
    """The JSON part of a shard item (ids, frame count, fps, size, crop sidecar, source path)."""
    return json.loads(item["info"])


def _encode_lossless(reader: VideoReader, fps: float) -> bytes:
    """Frames → mp4 bytes with libx264rgb crf 0 (lossless RGB, so decoded frames equal the PNGs)."""
    import av

    from datamodules.prepare.encode import fps_fraction

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264rgb", rate=fps_fraction(fps))
        h, w = reader.size
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        stream.options = {"crf": "0", "preset": "medium"}
        for frame in reader.iter_frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def build_index(out: str | os.PathLike) -> dict:
    """Read the shards at ``out`` once (local folder) and list their clips (the ``INDEX_NAME`` content)."""
    import litdata

    ds = litdata.StreamingDataset(str(out))
    clips = []
    for i in range(len(ds)):
        it = ds[i]
        info = item_info(it)
        clips.append({"index": i, **{k: v for k, v in info.items() if k != "crop_json"},
                      "has_meta": len(it["meta_npz"]) > 0, "has_crop": bool(info["crop_json"]),
                      "bytes": len(it["video_bytes"])})
    return {"version": INDEX_VERSION, "num_clips": len(clips), "clips": clips}


def write_shards(root: str | os.PathLike, out: str | os.PathLike, layout: str = "auto",
                 records: Optional[Sequence[ClipRecord]] = None, chunk_bytes: str | int = "256MB",
                 num_workers: int = 1, overwrite: bool = False, start_method: Optional[str] = None,
                 verbose: bool = True) -> dict:
    """Write every clip under ``root`` (or ``records``) as litdata shards into ``out`` (a folder or a URL);
    returns the clip index (also written as ``out/portraitlab_clips.json``).

    ``start_method``: multiprocessing start method of litdata's workers; default ``fork`` on Linux (``spawn``
    re-imports torch in every worker, ~20 s each on a small machine).
    """
    import litdata

    if records is None:
        records = discover(root, layout)
    if not records:
        raise ValueError(f"no clips found under {root} (layout={layout})")
    keys = [r.clip_id for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError(f"clip ids under {root} are not unique")
    if start_method is None:
        start_method = "fork" if sys.platform.startswith("linux") else "spawn"
    out = str(out).rstrip("/")
    if not is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    litdata.optimize(fn=_clip_item, inputs=[asdict(r) for r in records], output_dir=out, chunk_bytes=chunk_bytes,
                     num_workers=max(1, num_workers), mode="overwrite" if overwrite else None,
                     reorder_files=False, keep_data_ordered=True, start_method=start_method, verbose=verbose)
    if is_remote(out):
        from litdata.streaming.fs_provider import _get_fs_provider

        with tempfile.TemporaryDirectory() as tmp:
            index = build_index(out)  # streams the chunks through litdata's cache once
            local = Path(tmp) / INDEX_NAME
            local.write_text(json.dumps(index, indent=1))
            _get_fs_provider(out, {}).upload_file(str(local), f"{out}/{INDEX_NAME}")
        return index
    from datamodules.utils import atomic_write_json

    index = build_index(out)
    atomic_write_json(Path(out) / INDEX_NAME, index)
    return index
