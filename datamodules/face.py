"""Face detection and facial landmarks behind one small interface (data preparation, AKD and ArcFace alignment).

``FaceDetector`` is what the rest of portraitlab calls:

- ``detect(image) -> list[FaceBox]``: face boxes ``[x0, y0, x1, y1]`` in pixels of ``image`` with a score, best first.
- ``landmarks68(image, box) -> (68, 2)``: the iBUG-300W 68-point layout (jaw 0–16, brows 17–26, nose 27–35,
  eyes 36–47, mouth 48–67), x/y in pixels. AKD (average keypoint distance, FOMM §4) compares these.
- ``landmarks5(image, box) -> (5, 2)``: the ArcFace / insightface 5-point layout, in image order
  ``[eye on the image left, eye on the image right, nose tip, mouth corner left, mouth corner right]`` — the points
  ``insightface.utils.face_align.norm_crop`` maps onto its 112² template for identity (CSIM) embeddings.

Backends:

- ``dlib`` (always available offline): HOG + linear SVM detector (``dlib.get_frontal_face_detector``), the
  68-point ``shape_predictor`` (Kazemi & Sullivan 2014) and the 5-point predictor, both shipped by the
  ``face_recognition_models`` wheel. Its ArcFace-layout 5 points are derived from the 68 points (eye centres =
  means of the eye contours, nose tip = point 30, mouth corners = 48 and 54); the raw dlib 5-point shape (four eye
  corners + the base of the nose) is ``landmarks5(..., layout="dlib")``.
- ``insightface``: SCRFD (``det_10g.onnx``, Guo et al. 2021) for boxes and 5 points and ``1k3d68.onnx`` for 68
  points, both from the ``buffalo_l`` pack. Weights are looked up in ``root`` (argument), then
  ``$PORTRAITLAB_INSIGHTFACE_ROOT``, then insightface's cache ``~/.insightface/models/buffalo_l``; nothing is
  downloaded, a missing file raises ``FaceModelNotFound`` naming the file, the folder and the URL.

``arcface_align(image, landmarks5)`` warps a face onto ArcFace's 112² template (insightface's ``norm_crop``).

Images may be numpy arrays (H×W gray, H×W×1, H×W×3 RGB, H×W×4 RGBA; uint8 or float in [0, 1]), PIL images or
torch tensors (C×H×W in [0, 1]); see ``to_rgb_uint8``. RGBA is composited over white.
"""
from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

BUFFALO_L_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
INSIGHTFACE_ROOT_ENV = "PORTRAITLAB_INSIGHTFACE_ROOT"

# ArcFace 5-point layout from the 68-point layout (image left/right, as insightface's templates).
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = 30, 48, 54


class FaceModelNotFound(FileNotFoundError):
    """A face model weight file is missing; the message names the file, where to put it and where to get it."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face: corners in pixels (x1, y1 exclusive-ish as the detectors report them) and a score.

    Scores are the backend's own: the HOG SVM margin for dlib (≈0 at the threshold, 1–3 for clear faces),
    a probability for SCRFD.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float32)

    def scaled(self, factor: float) -> "FaceBox":
        """Coordinates multiplied by ``factor`` (map a box found on a resized image back to the original)."""
        return FaceBox(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.score)

    def iou(self, other: "FaceBox | Sequence[float]") -> float:
        return box_iou(self.as_array(), as_box_array(other))


def as_box_array(box: "FaceBox | Sequence[float] | np.ndarray") -> np.ndarray:
    """``[x0, y0, x1, y1]`` float32 from a FaceBox, a sequence or an array (extra entries such as a score ignored)."""
    if isinstance(box, FaceBox):
        return box.as_array()
    arr = np.asarray(box, dtype=np.float32).reshape(-1)
    if arr.size < 4:
        raise ValueError(f"a box needs [x0, y0, x1, y1], got {box!r}")
    return arr[:4]


def box_iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes."""
    a, b = as_box_array(a), as_box_array(b)
    ix = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    iy = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = ix * iy
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def to_rgb_uint8(image: Any, background: int = 255) -> np.ndarray:
    """Any supported image → contiguous H×W×3 uint8 RGB.

    numpy: H×W or H×W×1 (gray, replicated), H×W×3 (RGB), H×W×4 (RGBA, composited over ``background``);
    float arrays are taken as [0, 1]. PIL images are converted by mode. torch tensors are C×H×W (or H×W) in [0, 1].
    """
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        image = np.asarray(image)
    elif hasattr(image, "detach") and hasattr(image, "cpu"):  # torch
        t = image.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        image = t.float().numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an H×W(×C) image, got shape {arr.shape}")
    c = arr.shape[2]
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 2:  # gray + alpha
        arr = np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:]], axis=2)
        c = 4
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = np.rint(arr[..., :3] * alpha + background * (1.0 - alpha)).astype(np.uint8)
    elif arr.shape[2] != 3:
        raise ValueError(f"expected 1, 2, 3 or 4 channels, got {arr.shape[2]}")
    return np.ascontiguousarray(arr)


def _resize_for_detection(image: np.ndarray, min_side: int | None, max_side: int | None) -> tuple[np.ndarray, float]:
    """Rescale so that the longest side lies in [min_side, max_side]; returns (image, factor back to original px)."""
    h, w = image.shape[:2]
    long = max(h, w)
    if max_side and long > max_side:
        target = max_side
    elif min_side and long < min_side:
        target = min_side
    else:
        return image, 1.0
    import cv2

    s = target / float(long)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)
    return resized, long / float(max(resized.shape[:2]))


def landmarks5_from_68(points68: np.ndarray) -> np.ndarray:
    """ArcFace 5-point layout from the 68-point layout (eye centres, nose tip, mouth corners)."""
    p = np.asarray(points68, dtype=np.float32)
    return np.stack([p[_LEFT_EYE].mean(0), p[_RIGHT_EYE].mean(0), p[_NOSE_TIP], p[_MOUTH_LEFT], p[_MOUTH_RIGHT]])


class FaceDetector(ABC):
    """Detect faces and place landmarks. Subclasses implement ``_detect``, ``landmarks68`` and ``landmarks5``."""

    name: str = "base"

    def detect(self, image: Any, *, max_side: int | None = None, min_side: int | None = None,
               min_score: float | None = None) -> list[FaceBox]:
        """Faces in ``image``, best score first, in the pixels of ``image``.

        ``max_side``: detect on a copy downscaled to that longest side (speed); ``min_side``: upscale smaller
        images to it first (dlib's HOG misses faces under ~80 px). Boxes are mapped back to ``image``.
        ``min_score``: drop detections below it (backend units, see ``FaceBox``).
        """
        rgb = to_rgb_uint8(image)
        small, factor = _resize_for_detection(rgb, min_side, max_side)
        boxes = self._detect(small)
        if factor != 1.0:
            boxes = [b.scaled(factor) for b in boxes]
        if min_score is not None:
            boxes = [b for b in boxes if b.score >= min_score]
        return sorted(boxes, key=lambda b: -b.score)

    @abstractmethod
    def _detect(self, rgb: np.ndarray) -> list[FaceBox]:
        ...

    @abstractmethod
    def landmarks68(self, image: Any, box: FaceBox | Sequence[float]) -> np.ndarray:
        """(68, 2) float32 x/y pixels, iBUG-300W order, for the face in ``box``."""

    @abstractmethod
    def landmarks5(self, image: Any, box: FaceBox | Sequence[float]) -> np.ndarray:
        """(5, 2) float32 x/y pixels in the ArcFace layout (see the module docstring) for the face in ``box``."""

    def largest(self, image: Any, **kw) -> FaceBox | None:
        """The largest detected face (the usual "main face" of a portrait), or None."""
        boxes = self.detect(image, **kw)
        return max(boxes, key=lambda b: b.area) if boxes else None


# --------------------------------------------------------------------------------------------------------------- dlib
def _dlib_model_path(kind: str) -> Path:
    """Paths of the dlib models shipped by ``face_recognition_models`` (no download)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import face_recognition_models as frm
    except ImportError as e:  # pragma: no cover - it is a pinned dependency
        raise FaceModelNotFound(
            "dlib's landmark predictors come from the `face-recognition-models` package "
            "(pip install face-recognition-models==0.3.0)"
        ) from e
    path = Path({"68": frm.pose_predictor_model_location, "5": frm.pose_predictor_five_point_model_location}[kind]())
    if not path.is_file():
        raise FaceModelNotFound(
            f"dlib {kind}-point predictor {path.name} not found at {path}; reinstall face-recognition-models "
            "or download it from http://dlib.net/files/ (bz2) into that folder"
        )
    return path


class DlibFaceDetector(FaceDetector):
    """dlib HOG detector + 68/5-point shape predictors (all offline).

    ``upsample``: image pyramid upsamplings before HOG (0 finds faces ≳ 80 px, each +1 halves that, ×4 slower).
    ``threshold``: SVM margin added to the detector's own (0 = dlib's default operating point).
    """

    name = "dlib"

    def __init__(self, upsample: int = 0, threshold: float = 0.0):
        import dlib

        self._dlib = dlib
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self._detector = dlib.get_frontal_face_detector()
        self._pred68 = None
        self._pred5 = None

    def __getstate__(self):  # dlib objects do not pickle: rebuild in the worker process
        return {"upsample": self.upsample, "threshold": self.threshold}

    def __setstate__(self, state):
        self.__init__(**state)

    def _detect(self, rgb: np.ndarray) -> list[FaceBox]:
        rects, scores, _ = self._detector.run(rgb, self.upsample, self.threshold)
        return [FaceBox(float(r.left()), float(r.top()), float(r.right()), float(r.bottom()), float(s))
                for r, s in zip(rects, scores)]

    def _rect(self, box):
        x0, y0, x1, y1 = (int(round(float(v))) for v in as_box_array(box))
        return self._dlib.rectangle(x0, y0, x1, y1)

    def _shape(self, predictor, image, box) -> np.ndarray:
        shape = predictor(to_rgb_uint8(image), self._rect(box))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def landmarks68(self, image, box):
        if self._pred68 is None:
            self._pred68 = self._dlib.shape_predictor(str(_dlib_model_path("68")))
        return self._shape(self._pred68, image, box)

    def landmarks5(self, image, box, layout: str = "arcface"):
        """ArcFace layout from the 68 points (default), or ``layout="dlib"``: dlib's own 5-point predictor
        (``[right-eye outer, right-eye inner, left-eye outer, left-eye inner, nose base]``, subject's left/right)."""
        if layout == "arcface":
            return landmarks5_from_68(self.landmarks68(image, box))
        if layout == "dlib":
            if self._pred5 is None:
                self._pred5 = self._dlib.shape_predictor(str(_dlib_model_path("5")))
            return self._shape(self._pred5, image, box)
        raise ValueError(f"layout must be 'arcface' or 'dlib', got {layout!r}")


# -------------------------------------------------------------------------------------------------------- insightface
def insightface_model_dir(root: str | os.PathLike | None = None, pack: str = "buffalo_l",
                          filename: str = "det_10g.onnx") -> Path:
    """Folder holding the ``pack`` ONNX files: ``root`` > $PORTRAITLAB_INSIGHTFACE_ROOT > ~/.insightface/models/<pack>.

    ``root`` (and the variable) may be the pack folder itself, or an insightface root holding ``<pack>/`` or
    ``models/<pack>/``. Returns the first candidate holding ``filename``, else the primary candidate.
    """
    base = root or os.environ.get(INSIGHTFACE_ROOT_ENV)
    if base:
        base = Path(base).expanduser()
        candidates = [base, base / pack, base / "models" / pack]
    else:
        candidates = [Path("~/.insightface/models").expanduser() / pack]
    for c in candidates:
        if (c / filename).is_file():
            return c
    return candidates[0]


def insightface_model_file(filename: str, root: str | os.PathLike | None = None, pack: str = "buffalo_l") -> Path:
    """Path of one ``buffalo_l`` ONNX file, or ``FaceModelNotFound`` saying what to download and where to put it."""
    folder = insightface_model_dir(root, pack, filename)
    path = folder / filename
    if not path.is_file():
        raise FaceModelNotFound(
            f"insightface model file {filename!r} not found in {folder}. Download {BUFFALO_L_URL} and unzip it so "
            f"that {folder / filename} exists (or set ${INSIGHTFACE_ROOT_ENV} to the folder holding {filename}); "
            "portraitlab never downloads weights by itself."
        )
    return path


class InsightFaceDetector(FaceDetector):
    """SCRFD-10GF (``det_10g.onnx``) boxes + 5 points, ``1k3d68.onnx`` 68 points, from insightface's buffalo_l.

    The files are checked at construction (the error names them); onnxruntime runs on CPU unless
    ``providers`` says otherwise. ``det_size`` is SCRFD's input size, ``det_thresh`` its score threshold.
    """

    name = "insightface"

    def __init__(self, root: str | os.PathLike | None = None, det_size: int = 640, det_thresh: float = 0.5,
                 providers: Sequence[str] | None = None, pack: str = "buffalo_l"):
        self.root, self.pack = root, pack
        self.det_size, self.det_thresh = int(det_size), float(det_thresh)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self._det_path = insightface_model_file("det_10g.onnx", root, pack)
        self._det = None
        self._lmk = None

    def __getstate__(self):
        return {"root": self.root, "det_size": self.det_size, "det_thresh": self.det_thresh,
                "providers": self.providers, "pack": self.pack}

    def __setstate__(self, state):
        self.__init__(**state)

    def _model(self, filename: str):
        from insightface.model_zoo import model_zoo

        path = insightface_model_file(filename, self.root, self.pack)
        model = model_zoo.get_model(str(path), providers=self.providers)
        ctx = 0 if any("CUDA" in p for p in self.providers) else -1
        if filename.startswith("det_"):
            model.prepare(ctx, input_size=(self.det_size, self.det_size), det_thresh=self.det_thresh)
        else:
            model.prepare(ctx)
        return model

    def _scrfd(self, rgb: np.ndarray):
        if self._det is None:
            self._det = self._model("det_10g.onnx")
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        return self._det.detect(bgr, input_size=(self.det_size, self.det_size))

    def _detect(self, rgb):
        det, _ = self._scrfd(rgb)
        return [FaceBox(*map(float, d[:4]), float(d[4])) for d in det]

    def landmarks5(self, image, box):
        """SCRFD's 5 points of the detection best overlapping ``box`` (re-detected in a 2× context crop)."""
        rgb = to_rgb_uint8(image)
        b = as_box_array(box)
        cx, cy, side = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, max(b[2] - b[0], b[3] - b[1]) * 2.0
        x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        x1, y1 = int(min(rgb.shape[1], cx + side / 2)), int(min(rgb.shape[0], cy + side / 2))
        det, kps = self._scrfd(rgb[y0:y1, x0:x1])
        if kps is None or len(det) == 0:
            raise ValueError(f"SCRFD found no face around box {b.tolist()}")
        shifted = det[:, :4] + np.array([x0, y0, x0, y0], dtype=np.float32)
        best = int(np.argmax([box_iou(s, b) for s in shifted]))
        return (kps[best] + np.array([x0, y0], dtype=np.float32)).astype(np.float32)

    def landmarks68(self, image, box):
        from insightface.app.common import Face

        if self._lmk is None:
            self._lmk = self._model("1k3d68.onnx")
        bgr = np.ascontiguousarray(to_rgb_uint8(image)[..., ::-1])
        face = Face(bbox=as_box_array(box))
        pts = self._lmk.get(bgr, face)
        return np.asarray(pts, dtype=np.float32)[:, :2]


# ---------------------------------------------------------------------------------------------------- alignment
def arcface_align(image: Any, points5: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """ArcFace alignment: the similarity transform taking ``points5`` (ArcFace layout) onto insightface's
    112² template (``face_align.arcface_dst``, scaled for ``size``, a multiple of 112 or 128), and the warped
    size² RGB uint8 crop. Returns (crop, 2×3 matrix). No weights involved."""
    from insightface.utils import face_align

    with warnings.catch_warnings():  # insightface calls scikit-image's deprecated SimilarityTransform.estimate
        warnings.simplefilter("ignore", FutureWarning)
        crop, matrix = face_align.norm_crop2(to_rgb_uint8(image), np.asarray(points5, np.float32), image_size=size)
    return crop, matrix.astype(np.float32)


BACKENDS = {"dlib": DlibFaceDetector, "insightface": InsightFaceDetector}


_DETECTORS: dict = {}


def get_face_detector(backend: str = "dlib", **kwargs) -> FaceDetector:
    """A detector by name (``dlib`` | ``insightface``); kwargs go to the backend's constructor. Built once per
    process and argument set (loading dlib's models costs ~2 s), then shared."""
    try:
        cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown face backend {backend!r}; choose one of {sorted(BACKENDS)}") from None
    key = (backend, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key not in _DETECTORS:
        _DETECTORS[key] = cls(**kwargs)
    return _DETECTORS[key]
