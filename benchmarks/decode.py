"""Decode benchmark (``python -m benchmarks.decode``): raw decoders vs what the DataModule delivers.

On the same 256² H.264 clips (SynthFaces at 256² by default; ``--source fixtures`` upscales the real
TalkingHead-1KH tiles instead), in one process (no DataLoader workers, so every figure is one core's work):

1. raw sequential decode, frames/s, of each installed decoder: PyAV, decord2, OpenCV (all to RGB uint8);
2. the DataModule's delivered frames/s (decode + crop/resize + tensor), per decoder:
   * ``eval``: sequential self-reenactment items (``eval_dataset``, all frames of each clip), as float32 (what
     ``eval_dataset`` returns) and as uint8 (what loaders ship under a Trainer, converted on the device);
   * ``train``: the random-access training stream (T driving frames + 1 source frame per sample, uint8), with
     frames decoded per frame delivered (the price of seeking to keyframes; ``--gop`` re-encodes to see it);
3. ratios against the fastest raw decoder (goal ≥ 0.8).

``--json PATH`` also writes the figures (atomically).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_clips_synth(root: Path, n: int, frames: int, res: int) -> Path:
    from datamodules.config import SynthConfig
    from datamodules.synthfaces import render_dataset

    cfg = SynthConfig(num_identities=n, clips_per_identity=1, num_frames=frames, resolution=res, num_cross_pairs=0)
    render_dataset(root, cfg)
    return root


def make_clips_fixtures(root: Path, n: int, frames: int, res: int, gop: int = 25) -> Path:
    """Upscale the real 200² TalkingHead-1KH tiles to res² (ping-pong looped to ``frames``), H.264 yuv420p."""
    import av
    import cv2

    from tests.conftest import fixtures_root

    tiles = sorted((fixtures_root() / "clips").glob("talkinghead1kh_*.mp4"))
    if not tiles:
        raise FileNotFoundError(f"no talkinghead1kh_*.mp4 under {fixtures_root() / 'clips'}; use --source synth")
    for k in range(n):
        src = tiles[k % len(tiles)]
        with av.open(str(src)) as inp:
            fr = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
        loop = fr + fr[-2:0:-1]
        out_path = root / "train" / f"id{k:04d}#{src.stem}#0#{frames}.mp4"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(out_path), "w") as out:
            st = out.add_stream("libx264", rate=25)
            st.width = st.height = res
            st.pix_fmt = "yuv420p"
            st.codec_context.gop_size = gop
            st.options = {"crf": "18"}
            for i in range(frames):
                img = cv2.resize(loop[i % len(loop)], (res, res), interpolation=cv2.INTER_CUBIC)
                for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
            for p in st.encode():
                out.mux(p)
    return root


def reencode(paths: list[Path], gop: int) -> None:
    """Re-encode clips in place as H.264 with a keyframe every ``gop`` frames (what random access pays for)."""
    import av

    for p in paths:
        with av.open(str(p)) as inp:
            s = inp.streams.video[0]
            rate = s.average_rate or 25
            frames = [f.to_ndarray(format="rgb24") for f in inp.decode(s)]
        tmp = p.with_name(p.stem + ".gop.mp4")
        with av.open(str(tmp), "w") as out:
            st = out.add_stream("libx264", rate=rate)
            st.height, st.width = frames[0].shape[:2]
            st.pix_fmt = "yuv420p"
            st.codec_context.gop_size = gop
            st.options = {"crf": "18", "keyint_min": str(gop), "sc_threshold": "0"}
            for img in frames:
                for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(pkt)
            for pkt in st.encode():
                out.mux(pkt)
        tmp.replace(p)


def clip_paths(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.mp4") if "cross" not in p.parts)


# ---- raw sequential decoders ----------------------------------------------------------------------------------
def raw_pyav(paths, threads: int = 0) -> int:
    import av

    n = 0
    for p in paths:
        with av.open(str(p)) as c:
            s = c.streams.video[0]
            if threads:
                s.thread_type = "AUTO"
                s.thread_count = threads
            for f in c.decode(s):
                f.to_ndarray(format="rgb24")
                n += 1
    return n


def raw_decord(paths) -> int:
    import decord

    n = 0
    for p in paths:
        vr = decord.VideoReader(str(p), ctx=decord.cpu(0))
        for i in range(0, len(vr), 32):
            n += len(vr.get_batch(list(range(i, min(len(vr), i + 32)))).asnumpy())
    return n


def raw_opencv(paths) -> int:
    import cv2

    n = 0
    for p in paths:
        cap = cv2.VideoCapture(str(p))
        while True:
            ok, img = cap.read()
            if not ok:
                break
            cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            n += 1
        cap.release()
    return n


def timed(fn, *args, repeats: int = 2) -> float:
    """Best-of-``repeats`` frames/s."""
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn(*args)
        best = max(best, n / (time.perf_counter() - t))
    return best


# ---- the DataModule -------------------------------------------------------------------------------------------
def datamodule_fps(root: Path, decoder: str, res: int, train_samples: int, num_frames: int, repeats: int = 2,
                   use_meta: bool = False) -> dict:
    from datamodules.datamodule import VideoClipDataModule

    dm = VideoClipDataModule(dict(root=str(root), layout="fomm", resolution=res, crop="none", decoder=decoder,
                                  num_frames=num_frames, batch_size=1, num_workers=0, val_fraction=0.0,
                                  test_fraction=0.0, eval_num_frames=0, use_scan_cache=False,
                                  use_meta=use_meta))
    dm.setup()
    dm.splits["train"] = dm.scan_result.usable  # every clip the raw decoders see, whatever its folder
    out = {}
    # eval: every frame of every clip, sequentially (self-reenactment items of the training split)
    for key, u8 in (("eval", False), ("eval_uint8", True)):
        best = 0.0
        for _ in range(repeats):
            ds = dm.eval_dataset("train", "self", num_frames=0, as_uint8=u8)
            t = time.perf_counter()
            n = sum(ds[i]["driving"].shape[0] for i in range(len(ds)))
            best = max(best, n / (time.perf_counter() - t))
        out[key] = best
    # train: the random-access stream, T driving + 1 source frames per sample (uint8 transport, as under a Trainer)
    ds = dm.train_dataset(as_uint8=True)
    ds[0]  # open readers (as a worker would once)
    t = time.perf_counter()
    readers = list(ds.readers._readers.values())
    decoded0 = sum(getattr(r, "frames_decoded", 0) for r in readers)
    n = 0
    for i in range(train_samples):
        s = ds[i]
        n += s["driving"].shape[0] + 1
    dt = time.perf_counter() - t
    out["train"] = n / dt
    readers = list(ds.readers._readers.values())
    if readers and hasattr(readers[0], "frames_decoded"):
        decoded = sum(r.frames_decoded for r in readers) - decoded0
        out["train_decoded_per_delivered"] = decoded / max(n, 1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n")[0])
    ap.add_argument("--source", choices=("synth", "fixtures"), default="synth")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--num-frames", type=int, default=8, help="T driving frames per training sample")
    ap.add_argument("--train-samples", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is its best round")
    ap.add_argument("--meta", action="store_true", help="also load SynthFaces keypoints/masks (use_meta)")
    ap.add_argument("--gop", type=int, default=0, help="re-encode the clips with this keyframe interval (0: as made)")
    ap.add_argument("--root", default=None, help="reuse / keep the clips here (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    tmp = None
    root = Path(args.root) if args.root else Path(tmp := tempfile.mkdtemp(prefix="pl_decode_bench_"))
    try:
        with console.status(f"making {args.clips} clips of {args.frames} frames at {args.resolution}² ({args.source})"):
            if not clip_paths(root):
                (make_clips_synth if args.source == "synth" else make_clips_fixtures)(
                    root, args.clips, args.frames, args.resolution)
        paths = clip_paths(root)
        if args.gop:
            with console.status(f"re-encoding with a keyframe every {args.gop} frames"):
                reencode(paths, args.gop)
        from datamodules.video import PyAVReader

        gops = [np.diff(PyAVReader(p)._keyframes).mean() if len(PyAVReader(p)._keyframes) > 1 else args.frames
                for p in paths]
        # rounds interleave every measurement and keep each one's best, so a burst of load from other
        # processes does not favour whichever ran first
        raw: dict = {}
        dmf: dict = {}
        for rnd in range(args.rounds):
            with console.status(f"round {rnd + 1}/{args.rounds}: raw sequential decoding"):
                for key, fn, extra in (("pyav", raw_pyav, ()), ("pyav_threads2", raw_pyav, (2,)),
                                       ("decord", raw_decord, ()), ("opencv", raw_opencv, ())):
                    raw[key] = max(raw.get(key, 0.0), timed(fn, paths, *extra, repeats=1))
            for dec in ("pyav", "decord"):
                with console.status(f"round {rnd + 1}/{args.rounds}: DataModule ({dec})"):
                    got = datamodule_fps(root, dec, args.resolution, args.train_samples, args.num_frames, repeats=1,
                                         use_meta=args.meta)
                dmf[dec] = {k: max(v, dmf.get(dec, {}).get(k, 0.0)) if not k.endswith("delivered") else v
                            for k, v in got.items()}
        fastest = max(raw.values())
        table = Table(title=f"decode @ {args.resolution}², {len(paths)} clips × {args.frames} frames "
                            f"(mean GOP {np.mean(gops):.0f}), one process, best of {args.rounds} rounds")
        table.add_column("what")
        table.add_column("frames/s", justify="right")
        table.add_column("vs fastest raw", justify="right")
        for k, v in raw.items():
            table.add_row(f"raw {k}", f"{v:.0f}", f"{v / fastest:.2f}")
        for dec, d in dmf.items():
            table.add_row(f"DataModule eval float32 ({dec})", f"{d['eval']:.0f}", f"{d['eval'] / fastest:.2f}")
            table.add_row(f"DataModule eval uint8 ({dec})", f"{d['eval_uint8']:.0f}", f"{d['eval_uint8'] / fastest:.2f}")
            extra = (f", {d['train_decoded_per_delivered']:.1f} dec/deliv"
                     if "train_decoded_per_delivered" in d else "")
            table.add_row(f"DataModule train T={args.num_frames} ({dec}{extra})", f"{d['train']:.0f}",
                          f"{d['train'] / fastest:.2f}")
        console.print(table)
        best_dec = max(dmf, key=lambda k: dmf[k]["eval_uint8"] + dmf[k]["train"])
        console.print(f"fastest DataModule decoder on these clips: [bold]{best_dec}[/]")
        result = {"source": args.source, "resolution": args.resolution, "clips": len(paths), "frames": args.frames, "gop": float(np.mean(gops)),
                  "raw": raw, "datamodule": dmf, "fastest_raw": fastest, "best_datamodule_decoder": best_dec}
        if args.json:
            from datamodules.utils import atomic_write_json

            atomic_write_json(args.json, result)
        return result
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
