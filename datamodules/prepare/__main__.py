"""Dataset preparation CLI.

    python -m datamodules.prepare crop SRC DST [--resolution 256] [--scale 1.6] [--det-stride 3] [--workers 2] ...
    python -m datamodules.prepare shards ROOT OUT [--layout auto] [--chunk-bytes 256MB] [--workers 4] ...
    python -m datamodules.prepare vox --metadata vox-metadata.csv --video-folder RAW --out ROOT [--format png|mp4]
                                      [--workers N] [--download]
    python -m datamodules.prepare th1kh --tubes train_video_tubes.txt --video-folder RAW --out OUT [--format mp4|png]
    python -m datamodules.prepare celebvhq --info celebvhq_info.json --video-folder RAW --out OUT [--format mp4|png]
    python -m datamodules.prepare hdtf --annotations HDTF_dataset --video-folder RAW --out OUT [--format mp4|png]
    python -m datamodules.prepare masks ROOT [--face dlib68] [--hand keypointrcnn] [--max-frames N] [--overwrite]

``crop``: face-centred, per-segment stable square crops of every clip under SRC (loose video files or any layout)
into DST/<identity>/<video>/<clip>_segNN.mp4 + .crop.json, and DST/crop_report.json (see ``datamodules.prepare.crop``).
``vox``: raw videos + the official ``vox-metadata.csv`` → FOMM's VoxCeleb layout ROOT/{train,test}/<id>#<video>#<start>#<end>.mp4
by the official ``load_videos.py`` rule (see ``datamodules.prepare.vox``); report in ROOT/prepare_vox_report.json.
``th1kh`` / ``celebvhq`` / ``hdtf``: TalkingHead-1KH tubes / CelebV-HQ clips / HDTF clips by the official scripts' crop and trim rules
(see ``datamodules.prepare.tubes``); report in OUT/prepare_<dataset>_report.json.
``masks``: per-frame hand / face masks and their contact region as ROOT/meta/<stem>.npz (InterAnimate's region
masks; see ``datamodules.prepare.masks``).
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


def _add_vox(sub) -> None:
    p = sub.add_parser("vox", help="VoxCeleb chunks from raw videos + vox-metadata.csv (official load_videos.py rule)")
    p.add_argument("--metadata", required=True, help="vox-metadata.csv (video_id,start,end,bbox,fps,width,height,"
                                                     "partition,person_id)")
    p.add_argument("--video-folder", required=True, help="raw videos, <video_id>.mp4")
    p.add_argument("--out", required=True, help="output root (FOMM layout)")
    p.add_argument("--format", default="png", choices=["png", "mp4"], help="folder of %%07d.png frames or an mp4")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one video each)")
    p.add_argument("--image-shape", default="256,256",
                   help="H,W of the saved frames (skimage resize, anti-aliased); 'none' keeps the crop's size")
    p.add_argument("--download", action="store_true", help="fetch missing videos from YouTube with yt-dlp")
    p.add_argument("--no-progress", action="store_true")


def _add_tubes(sub) -> None:
    for name, flag, what in (("th1kh", "--tubes", "TalkingHead-1KH *_video_tubes.txt (video_name,H,W,S,E,L,T,R,B)"),
                             ("celebvhq", "--info", "CelebV-HQ celebvhq_info.json"),
                             ("hdtf", "--annotations", "HDTF's HDTF_dataset/ folder (*_annotion_time/_crop_wh/_resolution.txt)")):
        p = sub.add_parser(name, help=f"cut clips by {what} (official crop/trim rule)")
        p.add_argument(flag, dest="annotations", required=True, help=what)
        p.add_argument("--video-folder", required=True, help="raw videos, <name>.mp4")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--format", default="mp4", choices=["mp4", "png"], help="H.264 at the crop's size, or PNG folders")
        p.add_argument("--workers", type=int, default=1)
        p.add_argument("--no-progress", action="store_true")


def _add_masks(sub) -> None:
    from datamodules.prepare.masks import FACE_DETECTORS, HAND_DETECTORS

    p = sub.add_parser("masks", help="hand / face masks and contact region side files (ROOT/meta/<stem>.npz)")
    p.add_argument("root", help="dataset root (any layout)")
    p.add_argument("--face", default="dlib68", choices=FACE_DETECTORS)
    p.add_argument("--hand", default="keypointrcnn", choices=HAND_DETECTORS,
                   help="keypointrcnn needs its COCO weights (eval.weights keypointrcnn_resnet50_fpn_coco)")
    p.add_argument("--layout", default="auto", choices=["auto", "fomm", "nested", "frames"])
    p.add_argument("--max-frames", type=int, default=0, help="only the first N frames of each clip (0 = all)")
    p.add_argument("--overwrite", action="store_true", help="redo clips that already have a side file")
    p.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_crop(sub)
    _add_shards(sub)
    _add_vox(sub)
    _add_tubes(sub)
    _add_masks(sub)
    args = parser.parse_args(argv)

    if args.command == "crop":
        from datamodules.prepare.crop import CropConfig, crop_dataset, print_report

        cfg = CropConfig(**{f.name: getattr(args, f.name) for f in fields(CropConfig)})
        report = crop_dataset(args.src, args.dst, cfg, workers=args.workers, decoder=args.decoder,
                              progress=not args.no_progress, limit=args.limit)
        print_report(report)
        return 1 if report["summary"]["errors"] and not report["summary"]["segments_kept"] else 0

    if args.command == "vox":
        import logging

        from datamodules.prepare.vox import REPORT_NAME, prepare_vox

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        shape = None if args.image_shape.lower() == "none" else tuple(int(v) for v in args.image_shape.split(","))
        report = prepare_vox(args.metadata, args.video_folder, args.out, fmt=args.format, workers=args.workers,
                             image_shape=shape, download=args.download, progress=not args.no_progress)
        print(json.dumps({**report["summary"], "report": f"{args.out}/{REPORT_NAME}"}))
        return 0

    if args.command in ("th1kh", "celebvhq", "hdtf"):
        import logging

        from datamodules.prepare.tubes import prepare_tubes

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        report = prepare_tubes(args.command, args.annotations, args.video_folder, args.out, fmt=args.format,
                               workers=args.workers, progress=not args.no_progress)
        print(json.dumps({**report["summary"], "report": f"{args.out}/prepare_{args.command}_report.json"}))
        return 0

    if args.command == "masks":
        import logging

        from datamodules.prepare.masks import MissingDetectorWeights, prepare_masks

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        try:
            report = prepare_masks(args.root, face=args.face, hand=args.hand, layout=args.layout,
                                   max_frames=args.max_frames, overwrite=args.overwrite, progress=not args.no_progress)
        except MissingDetectorWeights as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps({**report["summary"], "report": f"{args.root}/prepare_masks_report.json"}))
        return 0

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
