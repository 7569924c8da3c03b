"""Dataset preparation CLI.

    python -m datamodules.prepare crop SRC DST [--resolution 256] [--scale 1.6] [--det-stride 3] [--workers 2] ...
    python -m datamodules.prepare shards ROOT OUT [--layout auto] [--chunk-bytes 256MB] [--workers 4] ...

``crop``: face-centred, per-segment stable square crops of every clip under SRC (loose video files or any layout)
into DST/<identity>/<video>/<clip>_segNN.mp4 + .crop.json, and DST/crop_report.json (see ``datamodules.prepare.crop``).
``shards``: litdata shards, one item per clip (see ``datamodules.shards``); OUT may be a folder or an s3:// URL.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import fields

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def _add_crop(sub) -> None:
    from datamodules.prepare.crop import CropConfig

    p = sub.add_parser("crop", help="face crop/alignment of clips (FOMM-style stable boxes)")
    p.add_argument("src", help="folder of clips (loose files or a fomm/nested/frames layout) or one video file")
    p.add_argument("dst", help="output root (nested layout)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one clip each)")
    p.add_argument("--decoder", default="pyav", choices=["pyav", "decord"])
    p.add_argument("--limit", type=int, default=0, help="only the first N clips (0 = all)")
    p.add_argument("--no-progress", action="store_true")
    defaults = CropConfig()
    for f in fields(CropConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)


def _add_shards(sub) -> None:
    p = sub.add_parser("shards", help="write litdata shards (one item = one clip's encoded bytes + ids + meta)")
    p.add_argument("root", help="dataset root (fomm / nested / frames layout)")
    p.add_argument("out", help="output folder or object-storage URL (s3://bucket/prefix)")
    p.add_argument("--layout", default="auto", choices=["auto", "fomm", "nested", "frames"])
    p.add_argument("--chunk-bytes", default="256MB", help="litdata chunk size (e.g. 64MB)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace existing shards at OUT")
    p.add_argument("--start-method", default=None, choices=[None, "fork", "spawn", "forkserver"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_crop(sub)
    _add_shards(sub)
    args = parser.parse_args(argv)

    if args.command == "crop":
        from datamodules.prepare.crop import CropConfig, crop_dataset, print_report

        cfg = CropConfig(**{f.name: getattr(args, f.name) for f in fields(CropConfig)})
        report = crop_dataset(args.src, args.dst, cfg, workers=args.workers, decoder=args.decoder,
                              progress=not args.no_progress, limit=args.limit)
        print_report(report)
        return 1 if report["summary"]["errors"] and not report["summary"]["segments_kept"] else 0

    if args.command == "shards":
        from datamodules.shards import INDEX_NAME, write_shards

        index = write_shards(args.root, args.out, layout=args.layout, chunk_bytes=args.chunk_bytes,
                             num_workers=args.workers, overwrite=args.overwrite, start_method=args.start_method)
        total = sum(c["num_frames"] for c in index["clips"])
        print(json.dumps({"clips": index["num_clips"], "frames": total, "index": f"{args.out}/{INDEX_NAME}"}))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
