"""`python -m experiments.animate ckpt=PATH source=IMAGE driving=VIDEO out=OUT.mp4 [relative_motion=true]`

Reads a source portrait and a driving clip, crops both (`animate_crop=center|face`; `face` uses the offline dlib
detector and one stable box per clip), resizes to the model's resolution, runs `model.animate` in chunks and writes
the generated clip plus a side-by-side grid (`OUT_grid.mp4`: source | driving | generated).

Models whose ``animate`` takes ``identity_source`` (InterAnimate's ID preserver) get the source crop at up to
``IDENTITY_MAX_SIDE`` px (the crop box's own size when smaller) rather than at the model's resolution: the face
detector / recognizer behind the identity embedding finds no face in a 32² or 64² image.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from experiments import runtime
from experiments.schema import register_configs

log = logging.getLogger("portraitlab.animate")
IDENTITY_MAX_SIDE = 512
register_configs()


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 H×W×3 as the image is meant to be displayed: EXIF orientation applied (phone photos store the
    sensor's orientation plus a tag), 16-bit (and 32-bit integer / float) grayscale scaled to 8 bits (PIL's
    ``convert("RGB")`` clips it: a 16-bit PNG became white), an alpha channel composited on white, grayscale
    expanded. 16-bit RGB(A) PNGs PIL already reduces to 8 bits per channel correctly."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(path))
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0                       # 0..65535 → 0..255
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0                       # float images in [0, 1]
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("RGB"))


def read_video(path: str | Path, max_frames: int = 0) -> tuple[np.ndarray, float]:
    from datamodules.video import open_video

    reader = open_video(str(path))
    n = reader.num_frames if not max_frames else min(max_frames, reader.num_frames)
    frames = reader.get_frames(list(range(n)))
    return frames, float(reader.fps or 25.0)


def square_box(frames: np.ndarray, mode: str) -> list[int]:
    """One crop box for a whole clip (or one image): the central square, or the FOMM-style expanded face box
    `prepare crop` uses (dlib detector, offline weights), fixed over the clip so the crop does not jitter."""
    H, W = frames.shape[1:3]
    if mode == "face":
        from datamodules.face import get_face_detector
        from datamodules.prepare.crop import CropConfig, segment_box

        detector, crop_cfg = get_face_detector("dlib"), CropConfig()
        boxes = []
        for frame in frames[:: max(1, len(frames) // 16)]:
            found = detector.detect(frame, max_side=crop_cfg.det_max_side, min_side=crop_cfg.det_min_side)
            if found:
                boxes.append(found[0].as_array())
        if boxes:
            return segment_box(boxes, (H, W), crop_cfg)[0]
        log.warning("no face found: falling back to the central square")
    side = min(H, W)
    y0, x0 = (H - side) // 2, (W - side) // 2
    return [x0, y0, x0 + side, y0 + side]


def crop_resize(frames: np.ndarray, box: list[int], size: int) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×size×size float in [0, 1]; outside the frame is padded black, as `prepare crop` does."""
    from datamodules.prepare.crop import crop_frame

    out = np.stack([crop_frame(f, box, size) for f in frames])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255)


def driving_landmarks(driving: torch.Tensor) -> torch.Tensor | None:
    """dlib's 68 landmarks (pixels) of each driving frame (T×3×H×W in [0, 1]) → T×68×2, for models whose local
    control is landmark-centred (X-Portrait's eye/mouth patches). A frame without a face takes the previous frame's
    landmarks (the next found one's at the start); None when no frame has a face (the model then uses its fixed
    boxes' centres, and says so)."""
    from datamodules.face import get_face_detector

    detector = get_face_detector("dlib")
    frames = (driving.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    found: list[np.ndarray | None] = []
    for frame in frames:
        box = detector.largest(frame)
        found.append(None if box is None else detector.landmarks68(frame, box).astype(np.float32))
    known = [f for f in found if f is not None]
    if not known:
        log.warning("no face in the driving clip: local control uses its fixed boxes' centres")
        return None
    last, out = known[0], []
    for f in found:
        last = f if f is not None else last
        out.append(last)
    missing = sum(f is None for f in found)
    if missing:
        log.warning("no face in %d of %d driving frames: their landmarks repeat the nearest found frame's",
                    missing, len(found))
    return torch.from_numpy(np.stack(out))


@torch.no_grad()
def run_animation(model, source: torch.Tensor, driving: torch.Tensor, relative: bool, chunk: int = 16,
                  identity_source: torch.Tensor | None = None, progress: bool = True) -> torch.Tensor:
    """source 3×H×W, driving T×3×H×W → T×3×H×W. Relative motion is taken w.r.t. the clip's first frame.
    ``identity_source`` (3×h×w, any size): the source for a model's ID preserver, when its ``animate`` takes one.
    ``progress``: frames done (a bar on a terminal, plain lines in a log; ``toolbox.progress``)."""
    kwargs = {}
    params = inspect.signature(model.animate).parameters
    if "relative" in params:
        kwargs["relative"] = relative
    if identity_source is not None and "identity_source" in params:
        kwargs["identity_source"] = identity_source[None]
    landmarks = None
    if "keypoints" in params and bool(getattr(getattr(model, "cfg", None), "use_local_control", False)):
        landmarks = driving_landmarks(driving)    # X-Portrait: eye/mouth patches centred on the driving landmarks
    from toolbox.progress import Progress

    outs = []
    with Progress(total=driving.shape[0], desc="animate", unit="frames", enabled=progress) as bar:
        for start in range(0, driving.shape[0], chunk):
            part = driving[start:start + chunk][None]
            if "driving_initial" in params:
                kwargs["driving_initial"] = driving[:1]
            if landmarks is not None:
                kwargs["keypoints"] = landmarks[start:start + chunk][None]
            outs.append(model.animate(source[None], part, **kwargs)[0])
            bar.update(part.shape[1])
    return torch.cat(outs)


def animate(cfg: DictConfig) -> Path:
    from lit_models.common.visual import grid_frames, write_video
    from lit_models.registry import build_model, load_model

    for key in ("source", "driving", "out"):
        if not cfg.get(key):
            raise runtime.ConfigError(f"{key}= is required (animate ckpt=PATH source=IMAGE driving=VIDEO out=OUT.mp4)")
    from eval.faces import attach_identity_encoder

    # φ for InterAnimate's ID preserver (else a no-op)
    model = attach_identity_encoder(load_model(cfg.ckpt, weights=cfg.ckpt_weights) if cfg.ckpt else build_model(cfg.model))
    if not cfg.ckpt and model.trainable:
        raise runtime.ConfigError(f"model={cfg.model.name} has trainable parameters: pass ckpt=PATH")
    model.eval()
    size = int(model.hparams["model"].get("resolution", cfg.data.resolution))
    src_img = read_image(cfg.source)[None]
    drv, fps = read_video(cfg.driving, cfg.max_frames)
    src_box = square_box(src_img, cfg.animate_crop)
    source = crop_resize(src_img, src_box, size)[0]
    id_source = None
    if "identity_source" in inspect.signature(model.animate).parameters:
        id_side = max(size, min(IDENTITY_MAX_SIDE, src_box[2] - src_box[0]))
        id_source = crop_resize(src_img, src_box, id_side)[0]
    driving = crop_resize(drv, square_box(drv, cfg.animate_crop), size)
    generated = run_animation(model, source, driving, cfg.relative_motion, identity_source=id_source)
    ident = getattr(model, "last_identity", None)
    if ident is not None:
        if bool(ident["found"].all()):
            print(f"ID preserver: face found in the {ident['size'][1]}×{ident['size'][0]} source crop")
        else:
            log.warning("ID preserver: no face in the %s source crop: the learned no-identity tokens were used",
                        "×".join(map(str, ident["size"] or ())))
    out = Path(cfg.out)
    frames = (generated.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    write_video(frames, out, fps=round(fps))
    grid = grid_frames(source[None], driving[None], generated[None])
    write_video(grid, out.with_name(out.stem + "_grid.mp4"), fps=round(fps))
    print(f"animated {len(frames)} frames at {size}²: {out} (grid: {out.with_name(out.stem + '_grid.mp4')})")
    return out


@hydra.main(config_path="configs", config_name="animate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    runtime.setup_logging()
    animate(cfg)


if __name__ == "__main__":
    main()
