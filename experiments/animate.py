"""`python -m experiments.animate ckpt=PATH source=IMAGE driving=VIDEO out=OUT.mp4 [relative_motion=true]`

Reads a source portrait and a driving clip, crops both (`animate_crop=center|face`; `face` uses the offline dlib
detector and one stable box per clip), resizes to the model's resolution, runs `model.animate` once on the whole clip (`device=auto|cpu|cuda|cuda:N`,
`sampling.precision=auto|fp16|bf16|fp32`, one generator seeded from `seed`) and writes
the generated clip plus a side-by-side grid (`OUT_grid.mp4`: source | driving | generated).

``preprocess=auto|official|none``: methods with an official input preprocessing (``official_preprocess``) get it
instead of the crops above (auto = official for them): X-Portrait's full-frame 512² alignment and FAN patches
(:func:`xportrait_inputs`), X-NeMo's BlazeFace crops (:func:`xnemo_inputs`); its detector is built first
(:func:`official_detector`), so absent weights or packages fail before any work.

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
from omegaconf import DictConfig, OmegaConf

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
    control is landmark-centred (X-Portrait's eye/mouth patches, ``preprocess=none``); the same function feeds
    them in evaluation (``eval.runner.local_control_landmarks``). A frame without a face takes the nearest found
    frame's landmarks; None when no frame has a face (the model then uses its fixed boxes' centres)."""
    from datamodules.preprocess.xportrait import dlib_landmarks

    frames = (driving.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    found = dlib_landmarks(frames)
    return None if found is None else torch.from_numpy(found)


@torch.no_grad()
def run_animation(model, source: torch.Tensor, driving: torch.Tensor, relative: bool,
                  identity_source: torch.Tensor | None = None, progress: bool = True,
                  generator: torch.Generator | None = None, landmarks: torch.Tensor | None = None,
                  device: torch.device | None = None, precision: str = "fp32",
                  patch_centres: torch.Tensor | None = None, reference_motion: torch.Tensor | None = None,
                  clip_pixels: torch.Tensor | None = None) -> torch.Tensor:
    """source 3×H×W, driving T×3×H×W → T×3×H×W: ONE ``model.animate`` call on the whole clip (a diffusion method
    samples it in one trajectory, every draw from ``generator``; frame-wise methods chunk internally). Relative
    motion is taken w.r.t. the clip's first frame. ``identity_source`` (3×h×w, any size): the source for a model's
    ID preserver, when its ``animate`` takes one. ``landmarks`` (T×K×2 pixels of ``driving``): X-Portrait's local
    patches; None: dlib's, found here, for models with landmark-centred local control. ``device``: where the
    inputs go (the model is already there); ``precision``: fp32 | fp16 | bf16 (autocast). ``patch_centres``
    (T×3×2 pixels): the official X-Portrait preprocessing's local patches (then no landmarks are detected here).
    ``reference_motion`` / ``clip_pixels`` (1×3×224×224): the official X-NeMo preprocessing's guidance-negative crop
    and CLIP input of the reference."""
    from lit_models.base import animate_kwargs, precision_context

    device = torch.device(device) if device is not None else source.device
    if landmarks is None and patch_centres is None and bool(getattr(getattr(model, "cfg", None), "use_local_control", False)) \
            and "keypoints" in inspect.signature(model.animate).parameters:
        landmarks = driving_landmarks(driving)    # X-Portrait: eye/mouth patches centred on the driving landmarks
    kwargs = animate_kwargs(
        model, relative=relative, generator=generator,
        identity_source=None if identity_source is None else identity_source[None].to(device),
        driving_initial=driving[:1].to(device),
        keypoints=None if landmarks is None else landmarks[None].to(device),
        patch_centres=None if patch_centres is None else patch_centres[None].to(device),
        reference_motion=None if reference_motion is None else reference_motion.to(device),
        clip_pixels=None if clip_pixels is None else clip_pixels.to(device))
    from toolbox.progress import Progress

    with Progress(total=driving.shape[0], desc="animate", unit="frames", enabled=progress) as bar:
        with precision_context(precision, device):
            out = model.animate(source[None].to(device), driving[None].to(device), **kwargs)[0]
        bar.update(driving.shape[0])
    return out.float().cpu()


def preprocess_of(model, spec: str) -> str:
    """``preprocess=auto|official|none`` for this model: auto = official for methods that define one
    (``official_preprocess``: X-Portrait, X-NeMo), none otherwise."""
    if spec not in ("auto", "official", "none"):
        raise runtime.ConfigError(f"preprocess must be auto | official | none, got {spec!r}")
    has = getattr(model, "official_preprocess", None) is not None
    if spec == "official" and not has:
        raise runtime.ConfigError(f"preprocess=official: {_name(model)} has no official preprocessing here "
                                  "(X-Portrait and X-NeMo have); use preprocess=none")
    return "official" if spec == "official" or (spec == "auto" and has) else "none"


def official_detector(model, device: torch.device):
    """The face detector of the model's official preprocessing (``official_preprocess``), built before any work so
    that absent weights or packages fail first: X-Portrait — face_alignment's FAN; X-NeMo — mediapipe's BlazeFace
    with ``eval.weights`` entry ``blazeface`` (sha256 checked)."""
    kind = model.official_preprocess
    try:
        if kind == "xportrait":
            from datamodules.preprocess.xportrait import fan_detector

            return fan_detector("cuda" if device.type == "cuda" else "cpu")
        if kind == "xnemo":
            from datamodules.preprocess.xnemo import blazeface_detector
            from eval.weights import resolve

            return blazeface_detector(str(resolve("blazeface", verify=True)))
    except (FileNotFoundError, ImportError) as err:
        raise runtime.ConfigError(str(err)) from None
    raise runtime.ConfigError(f"{_name(model)}.official_preprocess={kind!r}: no such preprocessing")


def _name(model_or_class) -> str:
    return model_or_class.__name__ if isinstance(model_or_class, type) else type(model_or_class).__name__


def model_class(cfg: DictConfig):
    """The LightningModule class ``animate`` will run, without building it: the checkpoint's ``model._target_``
    (its hyper-parameters read memory-mapped, tensors and plain types only) or the model config's; None when it
    cannot be told cheaply (then the checks run after loading)."""
    from experiments.validation import locate

    try:
        if cfg.ckpt:
            from lit_models.registry import _safe_globals

            with torch.serialization.safe_globals(_safe_globals()):
                ckpt = torch.load(cfg.ckpt, map_location="cpu", weights_only=True, mmap=True)
            target = ckpt.get("hyper_parameters", {}).get("model", {}).get("_target_")
        else:
            target = OmegaConf.select(cfg, "model._target_")
        return locate(target, "model._target_", want_class=True) if target else None
    except Exception:       # not a zip checkpoint, no target, …: load_model reports it
        return None


def xportrait_inputs(src_img: np.ndarray, drv: np.ndarray, fps: float, detect, cfg: DictConfig) -> dict:
    """X-Portrait's official inputs (``datamodules.preprocess.xportrait.official_inputs``): full-frame 512² source,
    driving warped onto it by the ``best_frame`` landmark box, FAN patch centres."""
    from datamodules.preprocess.xportrait import official_inputs

    inp = official_inputs(src_img, list(drv), detect, best_frame=int(cfg.get("best_frame", 0) or 0))
    print(f"X-Portrait official preprocessing: best frame {inp['best_frame']}, "
          f"{'aligned' if inp['affine'] is not None else 'not aligned (no face)'}, "
          f"{inp['no_face_frames']} frame(s) without patches")
    return {"source": inp["source"], "driving": inp["driving"], "patch_centres": inp["patch_centres"]}


def xnemo_inputs(src_img: np.ndarray, drv: np.ndarray, fps: float, detect, cfg: DictConfig) -> dict:
    """X-NeMo's official inputs (``datamodules.preprocess.xnemo.detect_and_crop``): BlazeFace boxes, the 512²
    reference crop and its CLIP input, the reference's own 224² crop (guidance negative), the smoothed 224² motion
    crops of the driving frames' left squares; at most the official script's first 500 frames."""
    from datamodules.preprocess.xnemo import OFFICIAL_MAX_FRAMES, detect_and_crop

    if len(drv) > OFFICIAL_MAX_FRAMES:
        print(f"X-NeMo official preprocessing: the first {OFFICIAL_MAX_FRAMES} of {len(drv)} driving frames "
              "(the official script's clip_length)")
        drv = drv[:OFFICIAL_MAX_FRAMES]
    try:
        inp = detect_and_crop(src_img, list(drv), detect, fps)
    except ValueError as err:
        raise runtime.ConfigError(f"source={cfg.source} driving={cfg.driving}: {err}") from None
    print(f"X-NeMo official preprocessing: reference box {inp['reference_box'].tolist()}, "
          f"{len(inp['driving_boxes'])} driving boxes at {fps:g} fps")
    return {"source": inp["source"][0], "driving": inp["driving"][0],
            "reference_motion": inp["reference_motion"], "clip_pixels": inp["clip_pixels"]}


OFFICIAL_INPUTS = {"xportrait": xportrait_inputs, "xnemo": xnemo_inputs}


def animate(cfg: DictConfig) -> Path:
    from lit_models.common.visual import grid_frames, write_video
    from lit_models.registry import build_model, load_model

    for key in ("source", "driving", "out"):
        if not cfg.get(key):
            raise runtime.ConfigError(f"{key}= is required (animate ckpt=PATH source=IMAGE driving=VIDEO out=OUT.mp4)")
    from eval.faces import attach_identity_encoder

    # φ for InterAnimate's ID preserver (else a no-op)
    from experiments.evaluate import cli_device
    from lit_models.base import model_dtype, resolve_precision

    device = cli_device(cfg)        # device=cuda without CUDA fails here, before loading
    spec = str(cfg.get("preprocess", "auto"))
    planned = model_class(cfg)      # the official detector's files / packages fail before the weights load
    detect = official_detector(planned, device) if planned is not None and preprocess_of(planned, spec) == "official" \
        else None
    model = attach_identity_encoder(load_model(cfg.ckpt, weights=cfg.ckpt_weights) if cfg.ckpt else build_model(cfg.model))
    if not cfg.ckpt and model.trainable:
        raise runtime.ConfigError(f"model={cfg.model.name} has trainable parameters: pass ckpt=PATH")
    model.eval().to(device)                                    # moved once
    precision = resolve_precision(OmegaConf.select(cfg, "sampling.precision", default="auto"), device, model)
    log.info("animate: device=%s dtype=%s precision=%s", device, model_dtype(model), precision)
    print(f"animate: device={device} dtype={model_dtype(model)} precision={precision}")
    size = int(model.hparams["model"].get("resolution", cfg.data.resolution))
    preprocess = preprocess_of(model, spec)
    if preprocess == "official" and detect is None:
        detect = official_detector(model, device)                 # before reading any media
    src_img = read_image(cfg.source)[None]
    drv, fps = read_video(cfg.driving, cfg.max_frames)
    id_source, extra = None, {}
    if preprocess == "official":
        extra = OFFICIAL_INPUTS[model.official_preprocess](src_img[0], drv, fps, detect, cfg)
        source, driving = extra.pop("source"), extra.pop("driving")
    else:
        src_box = square_box(src_img, cfg.animate_crop)
        source = crop_resize(src_img, src_box, size)[0]
        if "identity_source" in inspect.signature(model.animate).parameters:
            id_side = max(size, min(IDENTITY_MAX_SIDE, src_box[2] - src_box[0]))
            id_source = crop_resize(src_img, src_box, id_side)[0]
        driving = crop_resize(drv, square_box(drv, cfg.animate_crop), size)
    # one generator, seeded once, for the whole clip (noise, window offsets, posterior samples)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    generated = run_animation(model, source, driving, cfg.relative_motion, identity_source=id_source,
                              generator=generator, device=device, precision=precision, **extra)
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
    shown = [torch.nn.functional.interpolate(x, size=generated.shape[-2:], mode="bilinear", antialias=True)
             if x.shape[-2:] != generated.shape[-2:] else x for x in (source[None], driving)]   # X-NeMo: 512² | 224²
    grid = grid_frames(shown[0], shown[1][None], generated[None])
    write_video(grid, out.with_name(out.stem + "_grid.mp4"), fps=round(fps))
    print(f"animated {len(frames)} frames at {frames.shape[2]}×{frames.shape[1]}: {out} "
          f"(grid: {out.with_name(out.stem + '_grid.mp4')})")
    return out


@hydra.main(config_path="configs", config_name="animate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    runtime.setup_logging()
    with runtime.short_errors():        # device=cuda without CUDA, missing weights: one line, no traceback
        animate(cfg)


if __name__ == "__main__":
    main()
