"""X-NeMo's official preprocessing geometry (x-nemo-inference ``scripts/pose2vid_xnemo.py`` ``main`` and
``scripts/vid2pose.py``, with the pipeline's resizes from ``src/pipelines/pipeline_pose2vid_motenc_long.py``): face
boxes → crops → the arrays the networks read. The detector is BlazeFace (mediapipe ``FaceDetector`` with
``blaze_face_short_range.tflite``: the reference in image mode, driving frames in video mode); this module takes its
boxes ``[left, top, right, bottom]`` in pixels (``extract_bbox_mp``: the highest-scoring face, clipped at 0;
:func:`blazeface_detector` runs the official detector, :func:`detect_and_crop` detects then crops) and does
everything after the detection:

* **driving (motion) crops** — each frame's left square ``frame[:, :H]`` (H = frame height); one crop size for the
  clip: frame 0's box squared and scaled 1.1× (``scale_bb``; kept unscaled if that leaves the frame), its sides
  rounded down to even; crop centres = each frame's box centre (frame 0: the scaled box's), Gaussian-smoothed over
  time (``scipy.ndimage.gaussian_filter1d``, σ = 5, float32); each box shifted back inside the frame
  (``get_bbox_from_center``) and cut with ``int()`` bounds; Lanczos-resized to 224² (``VaeImageProcessor``) for the
  motion encoder. See :func:`motion_crop_boxes`, :func:`motion_crops`.
* **negative motion** — the reference's own tight crop: its box ``scale_bb(·, 1.1)``, cut with ``int()`` bounds,
  Lanczos to 224² (:func:`reference_motion_crop`).
* **reference** — ``crop_bbox_from_frames(increase_area=0.5, aspect_preserving=True, enable_oob=True)``: the box
  grown to a square of side ≈ 2·max(w, h) (``compute_aspect_preserved_bbox``, ``int()`` bounds), shifted inside
  the frame where it fits, else the frame black-padded by the largest overhang; cut and resized to 512² by
  ``skimage.transform.resize(anti_aliasing=True)`` + ``img_as_ubyte`` (:func:`reference_crop`).

Every function takes and returns uint8 H×W×3 RGB arrays (or boxes as float arrays), so the output equals the
official crops given the same detections; :func:`to_tensor` makes the [0, 1] tensors ``XNeMo.animate`` reads
(``source`` = the 512² reference, ``driving`` = the 224² motion crops, ``reference_motion`` = the 224² crop).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MOTION_SIZE = 224
REFERENCE_SIZE = 512
MOTION_BOX_SCALE = 1.1
CENTRE_SIGMA = 5.0
REFERENCE_INCREASE_AREA = 0.5
BLAZEFACE_URL = ("https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/float16/1/"
                 "blaze_face_short_range.tflite (also shipped in github.com/bytedance/x-nemo-inference)")


def _box(box) -> tuple[float, float, float, float]:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape[0] < 4:
        raise ValueError(f"a face box is [left, top, right, bottom], got {box!r}")
    return float(b[0]), float(b[1]), float(b[2]), float(b[3])


def scale_box(box, scale: float, size: Sequence[int]) -> np.ndarray:
    """Official ``scale_bb``: the square of side ``max(w, h) · scale`` around the box centre, or the box itself when
    that square leaves ``[0, W−1] × [0, H−1]`` (``size`` = (H, W))."""
    left, top, right, bot = _box(box)
    length = max(right - left, bot - top) * scale
    cx, cy = (left + right) * 0.5, (top + bot) * 0.5
    out = [cx - length / 2, cy - length / 2, cx + length / 2, cy + length / 2]
    if out[0] < 0 or out[1] < 0 or out[2] > size[1] - 1 or out[3] > size[0] - 1:
        return np.asarray(box, dtype=np.float64).reshape(-1)[:4].copy()
    return np.array(out)


def box_from_centre(centre, length, size: Sequence[int]) -> np.ndarray:
    """Official ``get_bbox_from_center``: a ``length`` = (w, h) box at ``centre`` = (x, y), shifted back inside
    ``[0, W−1] × [0, H−1]`` when it leaves it."""
    cx, cy = float(centre[0]), float(centre[1])
    w, h = length
    left, top, right, bot = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if left < 0 or top < 0 or right > size[1] - 1 or bot > size[0] - 1:
        dx = max(-left, 0) + min(size[1] - 1 - right, 0)
        dy = max(-top, 0) + min(size[0] - 1 - bot, 0)
        return np.array([left + dx, top + dy, right + dx, bot + dy])
    return np.array([left, top, right, bot])


def left_square(frame: np.ndarray) -> np.ndarray:
    """The official driving frame: its left H×H square (``frame[:, :H]``)."""
    return frame[:, : frame.shape[0]]


def motion_crop_boxes(boxes, frame_size: Sequence[int], scale: float = MOTION_BOX_SCALE,
                      sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """T×4 per-frame BlazeFace boxes on the left-square frames (``frame_size`` = (H, W) of those) → T×4 crop boxes:
    one size from frame 0's box scaled ``scale``, centres smoothed over time with σ = ``sigma`` frames."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] < 4 or len(boxes) == 0:
        raise ValueError(f"motion_crop_boxes: boxes must be T×4 [left, top, right, bottom], got shape {boxes.shape}")
    from scipy.ndimage import gaussian_filter1d

    first = scale_box(boxes[0], scale, frame_size)
    length = (round(first[2] - first[0]) // 2 * 2, round(first[3] - first[1]) // 2 * 2)
    centres = [((b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5) for b in [first, *boxes[1:, :4]]]
    centres = gaussian_filter1d(np.asarray(centres, dtype=np.float32), sigma=sigma, axis=0).tolist()
    return np.stack([box_from_centre(c, length, frame_size) for c in centres])


def cut(image: np.ndarray, box) -> np.ndarray:
    """``image[int(top):int(bottom), int(left):int(right)]`` (the official crops truncate float bounds)."""
    left, top, right, bot = _box(box)
    return image[int(top): int(bot), int(left): int(right)]


def lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """PIL Lanczos resize to size² (``VaeImageProcessor.resize``, its default resample)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("RGB").resize((size, size),
                                                                                          Image.LANCZOS))


def motion_crops(frames, boxes, size: int = MOTION_SIZE, scale: float = MOTION_BOX_SCALE,
                 sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """T frames (H×W×3 uint8, full frames) + their BlazeFace boxes on the left squares → T×size×size×3 uint8 motion
    crops (left square → smoothed fixed-size box → cut → Lanczos)."""
    squares = [left_square(np.asarray(f)) for f in frames]
    if len(squares) != len(boxes):
        raise ValueError(f"motion_crops: {len(squares)} frames but {len(boxes)} boxes")
    crop_boxes = motion_crop_boxes(boxes, squares[0].shape[:2], scale, sigma)
    return np.stack([lanczos(cut(sq, b), size) for sq, b in zip(squares, crop_boxes)])


def reference_motion_crop(image: np.ndarray, box, size: int = MOTION_SIZE,
                          scale: float = MOTION_BOX_SCALE) -> np.ndarray:
    """The guidance negative's input: the reference's box scaled 1.1 (``scale_bb``), cut, Lanczos to size²."""
    return lanczos(cut(image, scale_box(box, scale, image.shape[:2])), size)


def aspect_preserved_box(box, increase_area: float = REFERENCE_INCREASE_AREA) -> tuple[int, int, int, int]:
    """Official ``compute_aspect_preserved_bbox``: each side grown by at least ``increase_area`` of itself and
    enough to make a square of side ``(1 + 2·increase_area) · max(w, h)``; ``int()`` bounds."""
    left, top, right, bot = _box(box)
    w, h = right - left, bot - top
    wi = max(increase_area, ((1 + 2 * increase_area) * h - w) / (2 * w))
    hi = max(increase_area, ((1 + 2 * increase_area) * w - h) / (2 * h))
    return int(left - wi * w), int(top - hi * h), int(right + wi * w), int(bot + hi * h)


def _overhang(box, shape) -> tuple[int, int, int, int]:
    left, top, right, bot = box
    return -left, right - shape[1], -top, bot - shape[0]


def reference_box(box, shape: Sequence[int], increase_area: float = REFERENCE_INCREASE_AREA):
    """Official ``get_bbox`` (aspect preserving) + ``crop_bbox_from_frames``' padding: (box, padding) — the grown box
    shifted inside the frame along each axis where it fits; if it still leaves the frame, the frame is padded by
    ``padding`` = the largest overhang on every side and the box moved by it."""
    left, top, right, bot = aspect_preserved_box(box, increase_area)
    lo, ro, to, bo = _overhang((left, top, right, bot), shape)
    if max(lo, ro, to, bo) > 0:
        if lo > 0 and ro + lo <= 0:
            if max(_overhang((left + lo, top, right + lo, bot), shape)) <= 0:
                left, right = left + lo, right + lo
        elif ro > 0 and ro + lo <= 0:
            if max(_overhang((left - ro, top, right - ro, bot), shape)) <= 0:
                left, right = left - ro, right - ro
        if to > 0 and to + bo <= 0:
            if max(_overhang((left, top + to, right, bot + to), shape)) <= 0:
                top, bot = top + to, bot + to
        elif bo > 0 and to + bo <= 0:
            if max(_overhang((left, top - bo, right, bot - bo), shape)) <= 0:
                top, bot = top - bo, bot - bo
    pad = max(0, *_overhang((left, top, right, bot), shape))
    return (left + pad, top + pad, right + pad, bot + pad), pad


def reference_crop(image: np.ndarray, box, size: int = REFERENCE_SIZE,
                   increase_area: float = REFERENCE_INCREASE_AREA) -> np.ndarray:
    """The reference the networks see: the aspect-preserving square box (``increase_area`` 0.5), black padding
    where it leaves the frame, cut, anti-aliased resize to size² (``skimage.transform.resize(anti_aliasing=True)``,
    ``img_as_ubyte``)."""
    from skimage import img_as_ubyte
    from skimage.transform import resize

    (left, top, right, bot), pad = reference_box(box, image.shape, increase_area)
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), "constant", constant_values=0)
    return img_as_ubyte(resize(image[top:bot, left:right], (size, size), anti_aliasing=True))


MEDIAPIPE = "mediapipe==0.10.35"
"""The mediapipe build this project checks (``pip install --no-deps``; see :func:`require_mediapipe`)."""
OFFICIAL_MAX_FRAMES = 500
"""``pose2vid_xnemo.py`` ``clip_length``: the official script animates at most the first 500 driving frames."""


def require_mediapipe():
    """The ``mediapipe`` module, or an ImportError saying how to install it. Its wheels declare
    ``opencv-contrib-python``, a second OpenCV build that overwrites this environment's ``cv2/``
    (opencv-python-headless); BlazeFace's ``FaceDetector`` needs none of it, so install mediapipe alone."""
    try:
        import mediapipe as mp

        mp.tasks.vision.FaceDetector                      # noqa: B018  (the task API this module calls)
    except (ImportError, AttributeError) as err:
        raise ImportError(
            f"X-NeMo's official preprocessing (BlazeFace face boxes) needs the mediapipe package: "
            f"`pip install --no-deps {MEDIAPIPE}` (the `official` extra of pyproject.toml; --no-deps keeps out "
            f"opencv-contrib-python, which would overwrite opencv-python-headless); or preprocess=none") from err
    return mp


def extract_box(detections, index: int = 0) -> np.ndarray:
    """Official ``extract_bbox_mp`` on one frame's mediapipe detections: the highest-scoring face (``max`` of
    (score, box) tuples) as [left, top, right, bottom] clipped at 0. The official script stops on a frame without a
    face, and on several faces all scored above 0.8 (``"Detect Multiple faces!"``); so does this, naming the frame."""
    found = [(d.categories[0].score, (d.bounding_box.origin_x, d.bounding_box.origin_y,
                                      d.bounding_box.origin_x + d.bounding_box.width,
                                      d.bounding_box.origin_y + d.bounding_box.height)) for d in detections]
    if not found:
        raise ValueError(f"BlazeFace found no face in frame {index} (the official X-NeMo script stops there too)")
    if len(found) > 1 and min(found)[0] > 0.8:
        raise ValueError(f"BlazeFace found {len(found)} faces in frame {index}, all scored > 0.8 (the official "
                         "X-NeMo script refuses such frames: 'Detect Multiple faces!')")
    return np.maximum(np.asarray(max(found)[1], dtype=np.float64), 0)


def blazeface_boxes(frames, model_path: str, video: bool = True, fps: float = 25.0) -> np.ndarray:
    """The official detections (``extract_bbox_mp``): BlazeFace (mediapipe ``FaceDetector``, ``model_path`` =
    ``blaze_face_short_range.tflite``, default options) on each frame — ``video``: one detector in
    ``RunningMode.VIDEO`` with timestamps ``+= int(1000 / fps)`` from 0 for the driving clip (pass its left
    squares); else image mode (the reference) — N×4 [left, top, right, bottom] (:func:`extract_box`)."""
    from pathlib import Path

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"BlazeFace model not found at {model_path}; download {BLAZEFACE_URL}")
    mp = require_mediapipe()
    vision = mp.tasks.vision
    options = vision.FaceDetectorOptions(base_options=mp.tasks.BaseOptions(model_asset_path=str(model_path)),
                                         **({"running_mode": vision.RunningMode.VIDEO} if video else {}))
    out, stamp = [], 0
    with vision.FaceDetector.create_from_options(options) as detector:
        for i, frame in enumerate(frames):
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.asarray(frame, dtype=np.uint8).copy())
            stamp += int(1000 / fps)
            result = detector.detect_for_video(image, stamp) if video else detector.detect(image)
            out.append(extract_box(result.detections, i))
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def blazeface_detector(model_path: str):
    """The official X-NeMo face detector as a function ``detect(images, video=True, fps=25.0) → N×4`` boxes
    (:func:`blazeface_boxes`: mediapipe's BlazeFace, video mode for the driving clip, image mode for the reference).
    ``model_path``: ``blaze_face_short_range.tflite`` (``eval.weights`` entry ``blazeface``; resolved by the caller).
    Fails at once when the file or the mediapipe package is absent, before any frame is read."""
    from pathlib import Path

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"BlazeFace model not found at {model_path}; `python -m eval.weights fetch blazeface` "
                                f"or download {BLAZEFACE_URL}")
    require_mediapipe()

    def detect(images, video: bool = True, fps: float = 25.0) -> np.ndarray:
        return blazeface_boxes(images, str(model_path), video=video, fps=fps)

    return detect


def to_tensor(images):
    """uint8 …×H×W×3 → float32 …×3×H×W in [0, 1] (``torch``)."""
    import torch

    x = torch.from_numpy(np.array(images, dtype=np.uint8, order="C"))      # a writable copy
    return x.movedim(-1, -3).float() / 255.0


def clip_pixels(reference: np.ndarray):
    """The CLIP input of the reference crop (uint8 H×W×3, official 512²): PIL ``resize((224, 224))`` (its default
    bicubic) then ``transformers.CLIPImageProcessor()`` defaults → 1×3×224×224 float32 (``pixel_values``)."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    image = Image.fromarray(np.ascontiguousarray(reference)).convert("RGB").resize((224, 224))
    return CLIPImageProcessor()(images=image, return_tensors="pt").pixel_values


def official_inputs(reference: np.ndarray, reference_box_: Sequence[float], frames, boxes) -> dict:
    """Everything ``XNeMo.animate`` reads, from the detections: ``source`` 1×3×512×512, ``driving`` 1×T×3×224×224
    and ``reference_motion`` 1×3×224×224, all in [0, 1], and ``clip_pixels`` (the CLIP input)."""
    ref = reference_crop(reference, reference_box_)
    return {"source": to_tensor(ref)[None], "clip_pixels": clip_pixels(ref),
            "driving": to_tensor(motion_crops(frames, boxes))[None],
            "reference_motion": to_tensor(reference_motion_crop(reference, reference_box_))[None]}


def detect_and_crop(reference: np.ndarray, frames, detect, fps: float) -> dict:
    """The official script's order (``pose2vid_xnemo.py`` ``main``): the reference's box in image mode, each driving
    frame's left square in video mode at the clip's ``fps``, then :func:`official_inputs`; adds the detections
    (``reference_box``, ``driving_boxes``). ``detect``: :func:`blazeface_detector`'s function (or one returning
    the same boxes)."""
    try:
        ref_box = np.asarray(detect([reference], video=False), dtype=np.float64).reshape(-1, 4)[0]
    except ValueError as err:
        raise ValueError(f"source image: {err}") from None
    try:
        boxes = np.asarray(detect([left_square(np.asarray(f)) for f in frames], video=True, fps=fps),
                           dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"driving clip: {err}") from None
    return {**official_inputs(reference, ref_box, frames, boxes), "reference_box": ref_box, "driving_boxes": boxes}
