"""Probe every clip once and skip the bad ones (counted per reason, with a warning) — never a crash mid-epoch.

Reasons: ``empty`` (0 bytes), ``not_video`` (text, an image or another non-video format, or no video stream), ``corrupt``
(unreadable binary: FFmpeg cannot open or decode it), ``truncated`` (the index promises more data than the file holds, or ``moov`` is missing),
``too_short`` (fewer than ``min_frames`` frames), ``missing``. Probing demuxes the whole file (cheap, no decoding)
and decodes its first and last frames. Results are cached in a small JSON keyed by path + size + mtime, so a
re-run's setup only probes new or changed files.

CLI: ``python -m datamodules.scan ROOT [--layout auto] [--decoder pyav] [--min-frames 4]`` prints
``{"videos": N, "usable": U, "skipped": {reason: count}}``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional

from datamodules.layouts import ClipRecord, discover
from datamodules.utils import atomic_write_json
from datamodules.video import IMAGE_EXTS, open_video

log = logging.getLogger("portraitlab.data")

CACHE_NAME = ".portraitlab_scan.json"
PROBE_VERSION = 2      # 2: the final decode uses the configured decoder after PyAV's demux checks
# container signatures: (offset, bytes)
_SIGNATURES = [(4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (0, b"\x1a\x45\xdf\xa3"),
               (0, b"RIFF"), (0, b"\x00\x00\x01\xba"), (0, b"FLV"), (0, b"OggS")]


@dataclass
class Probe:
    ok: bool
    reason: Optional[str] = None        # None when ok
    num_frames: int = 0
    fps: float = 0.0
    detail: str = ""


@dataclass
class ScanResult:
    usable: list[ClipRecord]
    skipped: Counter = field(default_factory=Counter)
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)

    @property
    def videos(self) -> int:
        return len(self.usable) + sum(self.skipped.values())

    def summary(self) -> dict:
        return {"videos": self.videos, "usable": len(self.usable), "skipped": dict(sorted(self.skipped.items()))}


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 32 or b in (9, 10, 13) for b in head)


_NON_VIDEO = [b"\x89PNG", b"\xff\xd8\xff", b"%PDF", b"PK\x03\x04", b"GIF8", b"ID3", b"\x1f\x8b", b"BM"]


def _is_other_format(head: bytes) -> bool:
    """A recognisable non-video file (image, PDF, archive, mp3 …) that merely carries a video extension."""
    return _looks_like_text(head) or any(head.startswith(sig) for sig in _NON_VIDEO)


def _has_video_signature(head: bytes) -> bool:
    return any(head[off:off + len(sig)] == sig for off, sig in _SIGNATURES)


def _mp4_boxes_complete(p: Path, size: int) -> Optional[str]:
    """Walk the top-level ISO-BMFF boxes: a box running past the end of the file or no ``moov`` = truncated."""
    seen, off = set(), 0
    with open(p, "rb") as f:
        while off + 8 <= size:
            f.seek(off)
            hdr = f.read(16)
            n, kind = int.from_bytes(hdr[:4], "big"), hdr[4:8]
            if n == 1 and len(hdr) >= 16:
                n = int.from_bytes(hdr[8:16], "big")
            elif n == 0:
                n = size - off
            if n < 8:
                return f"invalid box size {n} at byte {off}"
            if off + n > size:
                return f"box {kind!r} at byte {off} needs {n} bytes, file has {size - off}"
            seen.add(kind)
            off += n
    if b"moov" not in seen:
        return "no moov box (the index was never written)"
    return None


def probe_file(path: str | os.PathLike, decoder: str = "pyav") -> Probe:
    """Probe one clip (video file or frame folder); ``too_short`` is decided later from ``num_frames``.

    The container checks (truncation, packet count) always demux with PyAV; the first and last frames are then
    decoded with ``decoder`` — the one that will read the clip (a clip PyAV decodes but decord cannot, e.g. a 32×32
    H.264 file, is ``corrupt`` under decoder=decord)."""
    p = Path(path)
    if not p.exists():
        return Probe(False, "missing")
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS)
        if not files:
            return Probe(False, "empty", detail="no frames in folder")
        try:
            r = open_video(p, decoder)
            r.get_frames([0, r.num_frames - 1])
        except Exception as e:  # noqa: BLE001 - any failure is a reason to skip
            return Probe(False, "corrupt", detail=str(e)[:200])
        return Probe(True, num_frames=r.num_frames, fps=r.fps)
    size = p.stat().st_size
    if size == 0:
        return Probe(False, "empty")
    with open(p, "rb") as f:
        head = f.read(4096)
    if _looks_like_text(head):
        return Probe(False, "not_video", detail="text file")
    if head[4:8] == b"ftyp":
        problem = _mp4_boxes_complete(p, size)
        if problem:
            return Probe(False, "truncated", detail=problem)
    import av

    try:
        container = av.open(str(p))
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "moov" in msg.lower() and _has_video_signature(head):
            return Probe(False, "truncated", detail=msg[:200])
        return Probe(False, "not_video" if _is_other_format(head) else "corrupt", detail=msg[:200])
    try:
        if not container.streams.video:
            return Probe(False, "not_video", detail="no video stream")
        stream = container.streams.video[0]
        declared = int(stream.frames or 0)
        count, end = 0, 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                count += 1
                if packet.pos is not None and packet.pos >= 0:
                    end = max(end, packet.pos + packet.size)
        except Exception as e:  # noqa: BLE001
            return Probe(False, "truncated", num_frames=count, detail=f"demux failed after {count} packets: {e}"[:200])
        if end > size or (declared and count < declared):
            return Probe(False, "truncated", num_frames=count,
                         detail=f"{count} of {declared} packets readable; data ends at byte {end}, file has {size}")
        if count == 0:
            return Probe(False, "corrupt", detail="no video packets")
    finally:
        container.close()
    try:
        with open_video(p, decoder) as r:
            r.get_frames([0, r.num_frames - 1])
            return Probe(True, num_frames=r.num_frames, fps=r.fps)
    except Exception as e:  # noqa: BLE001
        return Probe(False, "corrupt", num_frames=count, detail=f"decode failed with {decoder}: {e}"[:200])


def _probe_generic(p: Path, decoder: str, head: bytes) -> Probe:
    try:
        with open_video(p, decoder) as r:
            r.get_frames([0, r.num_frames - 1])
            return Probe(True, num_frames=r.num_frames, fps=r.fps)
    except Exception as e:  # noqa: BLE001
        return Probe(False, "not_video" if _is_other_format(head) else "corrupt", detail=str(e)[:200])


def _cache_key(path: str) -> str:
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return f"{path}|missing"
    if p.is_dir():  # a frame folder changes when files are added/removed: count + newest mtime
        names = sorted(os.listdir(p))
        return f"{path}|dir|{len(names)}|{st.st_mtime_ns}"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def default_cache_path(root: str | os.PathLike) -> Path:
    """``ROOT/.portraitlab_scan.json`` when the root is writable, else ``~/.cache/portraitlab/scan/<hash>.json``."""
    root = Path(root).absolute()
    if os.access(root, os.W_OK):
        return root / CACHE_NAME
    h = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "portraitlab" / "scan" / f"{h}.json"


def scan(records: Iterable[ClipRecord], decoder: str = "pyav", min_frames: int = 1,
         cache_path: Optional[str | os.PathLike] = None, progress: bool = True, warn: bool = True) -> ScanResult:
    """Probe ``records``; return the usable ones (``num_frames``/``fps`` filled in) and skip counts per reason."""
    records = list(records)
    cache: dict = {}
    if cache_path is not None and Path(cache_path).exists():
        try:
            data = json.loads(Path(cache_path).read_text())
            if data.get("version") == PROBE_VERSION and data.get("decoder") == decoder:
                cache = data.get("probes", {})
        except (OSError, ValueError):
            cache = {}
    result = ScanResult(usable=[])
    dirty = False
    todo = [(r, _cache_key(r.path)) for r in records]
    missing = [k for _, k in todo if k not in cache]
    prog = None
    if progress and len(missing) > 20:
        from rich.progress import Progress

        prog = Progress(transient=True)
        prog.start()
        task = prog.add_task(f"probing {len(missing)} clips", total=len(missing))
    try:
        for rec, key in todo:
            if key not in cache:
                cache[key] = probe_file(rec.path, decoder).__dict__
                dirty = True
                if prog is not None:
                    prog.advance(task)
            pr = Probe(**cache[key])
            if pr.ok and pr.num_frames < min_frames:
                pr = replace(pr, ok=False, reason="too_short", detail=f"{pr.num_frames} < min_frames={min_frames}")
            if pr.ok:
                result.usable.append(replace(rec, num_frames=pr.num_frames, fps=pr.fps))
            else:
                result.skipped[pr.reason] += 1
                result.bad.append((rec.path, pr.reason, pr.detail))
    finally:
        if prog is not None:
            prog.stop()
    if dirty and cache_path is not None:
        keep = {k for _, k in todo}
        try:
            atomic_write_json(cache_path, {"version": PROBE_VERSION, "decoder": decoder,
                                           "probes": {k: v for k, v in cache.items() if k in keep}})
        except OSError as e:
            log.warning("could not write the scan cache %s: %s", cache_path, e)
    if warn and result.skipped:
        examples = "; ".join(f"{Path(p).name}: {r}" for p, r, _ in result.bad[:3])
        warnings.warn(f"skipped {sum(result.skipped.values())} of {result.videos} clips "
                      f"({', '.join(f'{k}={v}' for k, v in sorted(result.skipped.items()))}), e.g. {examples}",
                      stacklevel=2)
    return result


def scan_root(root: str | os.PathLike, layout: str = "auto", decoder: str = "pyav", min_frames: int = 1,
              use_cache: bool = True, progress: bool = True, warn: bool = True) -> ScanResult:
    cache = default_cache_path(root) if use_cache else None
    return scan(discover(root, layout), decoder=decoder, min_frames=min_frames, cache_path=cache,
                progress=progress, warn=warn)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m datamodules.scan", description=__doc__.split("\n")[0])
    ap.add_argument("root")
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--decoder", default="pyav")
    ap.add_argument("--min-frames", type=int, default=4)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="also list every skipped file with its reason")
    args = ap.parse_args(argv)
    res = scan_root(args.root, args.layout, args.decoder, args.min_frames, use_cache=not args.no_cache, warn=False)
    out = res.summary()
    if args.verbose:
        out["bad"] = [{"path": p, "reason": r, "detail": d} for p, r, d in res.bad]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
