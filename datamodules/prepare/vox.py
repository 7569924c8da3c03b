"""``prepare vox``: raw YouTube videos + ``vox-metadata.csv`` → FOMM's VoxCeleb layout (the layout MRFA, FOMM and
TPSMM train and test on), by the rule of the official ``load_videos.py`` (AliaksandrSiarohin/video-preprocessing).

For each video ``v`` (``VIDEO_FOLDER/<video_id>.mp4``) and each metadata row (chunk) of it:

* frame ``i`` (every decoded frame, counted from 0) belongs to the chunk when
  ``i · ref_fps >= start · fps`` and ``i · ref_fps < end · fps`` — ``fps`` the file's frame rate as FFmpeg prints it
  (two decimals: 24000/1001 → 23.98, which ``imageio`` parses and the official script uses), ``ref_fps``, ``width``,
  ``height`` and ``partition`` from the video's first metadata row;
* the row's ``bbox`` ``left-top-right-bot`` is scaled from ``width × height`` to the file's frame size with the
  official expression ``int(left / (ref_width / frame_width))`` (truncation) and cut with numpy slicing;
* the crop is resized with ``skimage.transform.resize(crop, (256, 256), anti_aliasing=True)`` and converted with
  ``skimage.img_as_ubyte``;
* the chunk is saved as ``OUT/<partition>/<person_id>#<video_id>#<start:06d>#<end:06d>.mp4`` — a folder of
  ``%07d.png`` frames (``format=png``) or an H.264 file (``format=mp4``; written like the official
  ``imageio.mimsave`` defaults: libx264, yuv420p, CRF 23, preset medium, 10 fps).

Frames are decoded with PyAV (``to_ndarray("rgb24")``: the same RGB as FFmpeg's CLI through imageio-ffmpeg, measured
bit-exact in tests/golden/vox/NOTES.md). Unlike the official script, a chunk is written as soon as the decoder has
passed its end (memory holds only the open chunks), decoding stops after the last frame any chunk needs, a chunk
already on disk is not redone (resume), chunks are written atomically (temporary name, then rename), a chunk with no
frame or a box outside the frame is reported instead of written empty or ending the run, and a missing or
unreadable video is skipped and named in ``OUT/prepare_vox_report.json`` — never fatal.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from datamodules.prepare.pool import worker_pool
from datamodules.utils import atomic_write_json

log = logging.getLogger("portraitlab.prepare")
REPORT_NAME = "prepare_vox_report.json"
FORMATS = ("png", "mp4")
REQUIRED_COLUMNS = ("video_id", "start", "end", "bbox", "fps", "width", "height", "partition")
# imageio.mimsave's defaults for .mp4 (imageio's ffmpeg plugin: fps=10, libx264, yuv420p, no quality → x264's CRF 23)
MP4_FPS, MP4_CRF, MP4_PRESET = 10, 23, "medium"


@dataclass
class Chunk:
    """One metadata row: frames [start, end) of a video in the metadata's time base (``ref_fps``)."""

    video_id: str
    start: int
    end: int
    bbox: tuple[int, int, int, int]     # left, top, right, bot in the metadata's width × height
    person_id: str = ""

    def name(self, video_person_id: str) -> str:
        """The official file name: ``person_id#`` + the ``#``-parts of video_id reversed + ``#start#end.mp4``."""
        first = (video_person_id + "#") if video_person_id else ""
        first += "#".join(self.video_id.split("#")[::-1])
        return f"{first}#{str(self.start).zfill(6)}#{str(self.end).zfill(6)}.mp4"


@dataclass
class VideoJob:
    """The chunks of one video, with the reference values of its first metadata row (as the official script)."""

    video_id: str
    chunks: list[Chunk]
    ref_fps: float
    ref_width: int
    ref_height: int
    partition: str
    person_id: str = ""

    @property
    def file_stem(self) -> str:
        return self.video_id.split("#")[0]


def _number(value: str, column: str, row: int, path) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: row {row}: column {column!r} is not a number: {value!r}") from None
    return int(v) if v.is_integer() else v


def read_metadata(path: str | os.PathLike) -> list[VideoJob]:
    """The metadata CSV (``video_id,start,end,bbox,fps,width,height,partition[,person_id]``) grouped by video, in
    the order videos first appear. Fails naming the file, row and column on a malformed row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has {reader.fieldnames})")
        rows = list(reader)
    jobs: dict[str, VideoJob] = {}
    for k, r in enumerate(rows, start=2):
        vid = r["video_id"]
        try:
            bbox = tuple(int(v) for v in r["bbox"].split("-"))
        except ValueError:
            raise ValueError(f"{path}: row {k}: bbox {r['bbox']!r} is not left-top-right-bot integers") from None
        if len(bbox) != 4:
            raise ValueError(f"{path}: row {k}: bbox {r['bbox']!r} has {len(bbox)} values, not 4")
        chunk = Chunk(vid, int(_number(r["start"], "start", k, path)), int(_number(r["end"], "end", k, path)),
                      bbox, (r.get("person_id") or "").strip())
        if vid not in jobs:
            jobs[vid] = VideoJob(vid, [], _number(r["fps"], "fps", k, path), _number(r["width"], "width", k, path),
                                 _number(r["height"], "height", k, path), r["partition"].strip(), chunk.person_id)
        jobs[vid].chunks.append(chunk)
    return list(jobs.values())


# ------------------------------------------------------------------------------------------------------- decoding
def ffmpeg_printed_fps(rate) -> float:
    """The frame rate FFmpeg prints for a stream (libavformat/dump.c ``print_fps`` of ``avg_frame_rate``) as
    imageio-ffmpeg parses it back (regex ``([0-9]+\\.?[0-9]*) fps``): two decimals unless a whole number, 0 when
    FFmpeg prints none or prints ``Nk`` (the regex then fails)."""
    if not rate:
        return 0.0
    d = float(rate)
    v = int(np.rint(np.float32(d * 100)))       # lrintf(d * 100)
    if v == 0:
        return float(f"{d:1.4f}")
    if v % 100:
        return float(f"{d:3.2f}")
    if v % (100 * 1000):
        return float(f"{d:1.0f}")
    return 0.0


def iter_rgb_frames(path: str | os.PathLike) -> tuple[float, Iterator[np.ndarray]]:
    """(fps as the official script reads it, decoded RGB frames in order). The iterator ends at the end of the
    stream or at the first undecodable packet (the official script stops at imageio's CannotReadFrameError)."""
    import av

    container = av.open(str(path))
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: no video stream")
    stream = container.streams.video[0]
    fps = ffmpeg_printed_fps(stream.average_rate)

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                img = frame.to_ndarray(format="rgb24")
                rot = int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4   # FFmpeg CLI autorotates
                yield np.ascontiguousarray(np.rot90(img, rot)) if rot else img
        except av.error.FFmpegError as e:
            log.warning("%s: decoding stopped (%s)", path, e)
        finally:
            container.close()

    return fps, frames()


def scaled_bbox(bbox: Sequence[int], ref_width: float, ref_height: float, frame_hw: tuple[int, int]):
    """The official scaling of a metadata box to the file's frame size (truncating ``int``)."""
    left, top, right, bot = bbox
    h, w = frame_hw
    return (int(left / (ref_width / w)), int(top / (ref_height / h)),
            int(right / (ref_width / w)), int(bot / (ref_height / h)))


def crop_resize(frame: np.ndarray, box: Sequence[int], image_shape: Optional[tuple[int, int]]) -> np.ndarray:
    """``img_as_ubyte(resize(frame[top:bot, left:right], image_shape, anti_aliasing=True))`` (skimage)."""
    left, top, right, bot = box
    crop = frame[top:bot, left:right]
    if crop.size == 0:
        raise ValueError(f"box {tuple(box)} leaves nothing of the {frame.shape[1]}×{frame.shape[0]} frame")
    if image_shape is None:
        return crop
    from skimage import img_as_ubyte
    from skimage.transform import resize

    return img_as_ubyte(resize(crop, image_shape, anti_aliasing=True))


def in_chunk(i: int, chunk: Chunk, ref_fps: float, fps: float) -> bool:
    """The official membership rule of frame ``i``."""
    return (i * ref_fps >= chunk.start * fps) and (i * ref_fps < chunk.end * fps)


# --------------------------------------------------------------------------------------------------------- saving
def _write_png_folder(path: Path, frames: list[np.ndarray]) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for j, frame in enumerate(frames):
            img = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR) if frame.ndim == 3 else frame
            if not cv2.imwrite(str(tmp / f"{j:07d}.png"), img):
                raise OSError(f"could not write {tmp / f'{j:07d}.png'}")
        os.chmod(tmp, 0o755)        # mkdtemp makes it private
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_chunk(path: Path, frames: list[np.ndarray], fmt: str) -> None:
    """The official ``util.save``: a folder of ``%07d.png`` (png) or a video file (mp4), written atomically."""
    if fmt == "png":
        _write_png_folder(path, frames)
    elif fmt == "mp4":
        from datamodules.prepare.encode import encode_mp4

        encode_mp4(frames, path, fps=MP4_FPS, crf=MP4_CRF, preset=MP4_PRESET)
        os.chmod(path, 0o644)       # the encoder's temporary file is private
    else:
        raise ValueError(f"format={fmt!r} is not one of {', '.join(FORMATS)}")


# ------------------------------------------------------------------------------------------------------ per video
@dataclass
class VoxOptions:
    video_folder: str
    out: str
    fmt: str = "png"
    image_shape: Optional[tuple[int, int]] = (256, 256)
    download: bool = False


def chunk_path(job: VideoJob, chunk: Chunk, out: str | os.PathLike) -> Path:
    return Path(out) / job.partition / chunk.name(job.person_id)


def prepare_video(job: VideoJob, opt: VoxOptions) -> dict:
    """Cut every chunk of one video not yet on disk; returns the video's report entry (never raises)."""
    t0 = time.monotonic()
    entry = {"video_id": job.video_id, "partition": job.partition, "chunks": []}
    todo = []
    for c in job.chunks:
        p = chunk_path(job, c, opt.out)
        if p.exists():
            entry["chunks"].append({"name": c.name(job.person_id), "status": "done_before"})
        else:
            todo.append(c)
    if not todo:
        entry["status"] = "done_before"
        return entry
    src = Path(opt.video_folder) / f"{job.file_stem}.mp4"
    if not src.exists() and opt.download:
        try:
            download_video(job.file_stem, opt.video_folder)
        except Exception as e:  # noqa: BLE001 - a failed download is reported like a missing file
            entry["download_error"] = f"{type(e).__name__}: {e}"
    if not src.exists():
        entry.update(status="missing", source=str(src))
        entry["chunks"] += [{"name": c.name(job.person_id), "status": "missing_video"} for c in todo]
        return entry
    frames_of: dict[int, list[np.ndarray]] = {id(c): [] for c in todo}
    status: dict[int, dict] = {}
    boxes: dict[int, tuple] = {}
    decoded = 0

    def finish(c: Chunk) -> None:
        """Save a chunk whose frames are all collected, and free them."""
        name = c.name(job.person_id)
        fr = frames_of.pop(id(c))
        if id(c) in status:
            return
        if not fr:
            status[id(c)] = {"name": name, "status": "no_frames"}
            return
        try:
            save_chunk(chunk_path(job, c, opt.out), fr, opt.fmt)
            status[id(c)] = {"name": name, "status": "written", "num_frames": len(fr)}
        except Exception as e:  # noqa: BLE001
            status[id(c)] = {"name": name, "status": "write_error", "error": f"{type(e).__name__}: {e}"}

    try:
        fps, frames = iter_rgb_frames(src)
    except Exception as e:  # noqa: BLE001 - an unreadable video must not stop a dataset-scale run
        entry.update(status="unreadable", source=str(src), error=f"{type(e).__name__}: {e}")
        entry["chunks"] += [{"name": c.name(job.person_id), "status": "unreadable_video"} for c in todo]
        return entry
    open_chunks = list(todo)
    for i, frame in enumerate(frames):
        decoded += 1
        for c in list(open_chunks):
            if i * job.ref_fps >= c.end * fps:          # past its end: no later frame belongs to it
                open_chunks.remove(c)
                finish(c)
            elif in_chunk(i, c, job.ref_fps, fps) and id(c) not in status:
                try:
                    if id(c) not in boxes:
                        boxes[id(c)] = scaled_bbox(c.bbox, job.ref_width, job.ref_height, frame.shape[:2])
                    frames_of[id(c)].append(crop_resize(frame, boxes[id(c)], opt.image_shape))
                except Exception as e:  # noqa: BLE001 - e.g. a box outside the frame: this chunk only
                    status[id(c)] = {"name": c.name(job.person_id), "status": "crop_error",
                                     "error": f"{type(e).__name__}: {e} (box {boxes.get(id(c))})"}
                    frames_of[id(c)] = []
        if not open_chunks:
            frames.close()
            break
    for c in open_chunks:                                 # the video ended inside these chunks
        finish(c)
    entry.update(source=str(src), fps=fps, frames_decoded=decoded)
    entry["chunks"] += [status[id(c)] for c in todo]
    written = sum(1 for c in todo if status[id(c)]["status"] == "written")
    entry["status"] = "ok" if written else "no_output"
    entry["seconds"] = round(time.monotonic() - t0, 2)
    return entry


def download_video(video_id: str, video_folder: str | os.PathLike) -> Path:
    """``VIDEO_FOLDER/<video_id>.mp4`` from YouTube with yt-dlp (as the official script's youtube-dl call: best
    mp4, English subtitles)."""
    try:
        import yt_dlp
    except ImportError as e:
        raise ImportError("--download needs yt-dlp (pip install yt-dlp)") from e
    out = Path(video_folder) / f"{video_id}.mp4"
    opts = {"format": "best[ext=mp4]/best", "outtmpl": str(out), "writesubtitles": True,
            "writeautomaticsub": True, "subtitleslangs": ["en"], "skip_unavailable_fragments": True,
            "quiet": True, "noprogress": True}
    with yt_dlp.YoutubeDL(opts) as ydl:
        ydl.download([f"https://www.youtube.com/watch?v={video_id}"])
    return out


def _job(args):
    import warnings

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    job, opt = args
    return prepare_video(job, opt)


# the public metadata of AliaksandrSiarohin/video-preprocessing@ac40aac (its train / test partition is the official
# split FOMM, TPSMM and MRFA train and test on): 20,075 chunk rows of 3,442 videos (3,354 train, 88 test), 424 train identities
VOX_METADATA_SHA256 = "dfbaf55a6edaaf84add29f93692f8bb7289aff1102631bcdf1b1aaf52f3953f7"


def metadata_is_official(metadata: str | os.PathLike) -> tuple[bool, str]:
    """(the file is the pinned public ``vox-metadata.csv``, its sha256)."""
    import hashlib

    digest = hashlib.sha256(Path(metadata).read_bytes()).hexdigest()
    return digest == VOX_METADATA_SHA256, digest


def prepare_vox(metadata: str | os.PathLike, video_folder: str | os.PathLike, out: str | os.PathLike,
                fmt: str = "png", workers: int = 1, image_shape: Optional[tuple[int, int]] = (256, 256),
                download: bool = False, progress: bool = True) -> dict:
    """Prepare every chunk of ``metadata`` (see the module doc); writes and returns ``OUT/prepare_vox_report.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "mp4" and image_shape is not None and (image_shape[0] % 2 or image_shape[1] % 2):
        raise ValueError(f"--format mp4 (yuv420p) needs an even image shape, got {image_shape}")
    if not Path(video_folder).is_dir() and not download:
        raise FileNotFoundError(f"--video-folder {video_folder} does not exist")
    jobs = read_metadata(metadata)
    official, digest = metadata_is_official(metadata)
    if not official:
        log.warning("%s is not the pinned public vox-metadata.csv (sha256 %s…): the split is not the official one",
                    metadata, digest[:12])
    Path(video_folder).mkdir(parents=True, exist_ok=True)
    out = Path(out)
    for part in sorted({j.partition for j in jobs} | {"train", "test"}):
        (out / part).mkdir(parents=True, exist_ok=True)
    opt = VoxOptions(str(video_folder), str(out), fmt, tuple(image_shape) if image_shape else None, download)
    entries: list[dict] = []
    t0 = time.monotonic()

    def done(e: dict) -> None:
        entries.append(e)
        if progress:
            n_w = sum(1 for c in e["chunks"] if c["status"] == "written")
            log.info("[%d/%d] %s: %s, %d chunk(s) written (%.1f s elapsed)", len(entries), len(jobs), e["video_id"],
                     e["status"], n_w, time.monotonic() - t0)

    if workers > 1 and len(jobs) > 1:
        with worker_pool(workers) as pool:
            futures = [pool.submit(_job, (j, opt)) for j in jobs]
            for fut in as_completed(futures):
                done(fut.result())
    else:
        for j in jobs:
            done(_job((j, opt)))
    order = {j.video_id: k for k, j in enumerate(jobs)}
    entries.sort(key=lambda e: order[e["video_id"]])
    report = {"metadata": str(metadata), "metadata_sha256": digest, "metadata_is_official": official,
              "video_folder": str(video_folder), "out": str(out), "format": fmt,
              "image_shape": list(image_shape) if image_shape else None, "videos": entries,
              "summary": summarize(entries)}
    atomic_write_json(out / REPORT_NAME, report)
    return report


def summarize(entries: list[dict]) -> dict:
    from collections import Counter

    chunk_status = Counter(c["status"] for e in entries for c in e["chunks"])
    return {"videos": len(entries), "chunks": sum(len(e["chunks"]) for e in entries),
            "chunks_by_status": dict(sorted(chunk_status.items())),
            "frames_written": sum(c.get("num_frames", 0) for e in entries for c in e["chunks"]),
            "missing_videos": [e["video_id"] for e in entries if e["status"] == "missing"],
            "unreadable_videos": [e["video_id"] for e in entries if e["status"] == "unreadable"]}
