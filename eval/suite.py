"""Build a protocol's metric suite: resolve metric names to implementations and backends, once.

Names a protocol may list: ``l1 psnr ssim tdiff_l1 lpips fid fvd id aed akd mkr akd_gt akd_synthlm`` (backends resolved from
the protocol: ``lpips`` → ``lpips_alex``/``lpips_vgg``; ``id``/``aed`` → ``*_arcface``/``*_dlib``; ``akd``/``mkr`` →
``*_insightface``/``*_dlib``; ``id_backend: synthid`` → the learned SynthFaces identity embedding, SynthFaces
protocols only, its held-out statistics recorded under ``synth_identity`` in metrics.json), or an explicit backend
name (``id_dlib``, ``id_leakage_synthid``); identity leakage ``id_to_driver``,
``id_to_source``, ``id_leakage``, ``id_leakage_missing`` (``eval.faces``, backend as ``id``); contact-region
``l1_contact ssim_contact lpips_contact contact_rate`` (``eval.regions``; ``lpips_contact`` → ``lpips_<net>_contact``,
sharing the network of ``lpips_<net>``); ``lpips_<net>_official`` (the same network on [0, 1] inputs, as MRFA's
``reconstruction.py``); pose-evaluation's ``akd_fan``, ``mkr_fan``, ``aed_openface`` (``eval.pose_eval``); ``id_arcface`` names
its recogniser through the protocol's ``arcface_model`` (``w600k_r50`` → ``*_arcface``, ``glintr100`` →
``*_arcface_glintr100``); 3DMM errors ``aed_3dmm_deep3d``, ``apd_3dmm_deep3d``, ``pose_deg_deep3d``
(``eval.threedmm``: Deep3DFaceRecon coefficients; weights required, fails before work when absent). The
insightface analyzers' onnxruntime providers (from ``device``) are recorded under ``onnx_providers``.
Metrics backed by a stand-in network carry ``_STANDIN`` and the suite
reports ``standin=True``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from eval.faces import DEFAULT_ARCFACE_MODEL, LEAK_FAMILIES, arcface_backend_name, split_face_name
from eval.metrics import L1, PSNR, SSIM, LPIPS, AKDGroundTruth, FrameBatch, Metric, TemporalDiffL1

FACE_FAMILIES = ("id", "aed", "akd", "mkr", *LEAK_FAMILIES)
THREEDMM_METRICS = ("aed_3dmm_deep3d", "apd_3dmm_deep3d", "pose_deg_deep3d")   # eval.threedmm


@dataclass
class Suite:
    frame_metrics: list[Metric] = field(default_factory=list)
    dataset_metrics: list[Any] = field(default_factory=list)   # eval.fid.FID
    facts: dict = field(default_factory=dict)                  # recorded in metrics.json (e.g. the landmark model)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.frame_metrics] + [m.name for m in self.dataset_metrics]

    @property
    def standin(self) -> bool:
        return any(getattr(m, "standin", False) for m in self.frame_metrics + self.dataset_metrics)

    def to(self, device) -> "Suite":
        for m in self.frame_metrics + self.dataset_metrics:
            m.to(device)
        return self

    def evaluate(self, fb: FrameBatch) -> dict[str, np.ndarray]:
        """Per-frame values of every per-frame metric, and updates of the dataset-level ones (one pass)."""
        out = {m.name: np.asarray(m.frames(fb), dtype=np.float64) for m in self.frame_metrics}
        for m in self.dataset_metrics:
            m.update(fb)
        return out


def _face_backend(kind: str, requested: str, arcface_model: str = DEFAULT_ARCFACE_MODEL) -> str:
    """``auto`` → the insightface backend when its weights (for ``id``: those of ``arcface_model``) are present,
    else dlib."""
    from eval.faces import ARCFACE_MODELS
    from eval.weights import REGISTRY

    if requested != "auto":
        return requested
    need = ([ARCFACE_MODELS[arcface_model], "scrfd_det_10g"] if kind == "id"
            else ["scrfd_det_10g", "insightface_1k3d68"])
    return ("arcface" if kind == "id" else "insightface") if all(REGISTRY[n].present() for n in need) else "dlib"


class _Builder:
    """What the metric factories share while a suite is built: the protocol, the suite being filled, one LPIPS
    network per net, and the requests resolved after every name was read (contact metrics, face metrics)."""

    def __init__(self, protocol, device, keypoint_locator=None):
        self.protocol, self.device, self.keypoint_locator = protocol, device, keypoint_locator
        self.standins = set(protocol.get("standin_metrics", []) or [])
        self.pins = dict(protocol.get("weights", {}) or {})
        self.suite = Suite()
        self.face_requests: dict[str, str] = {}   # face metric name -> backend, built together (shared analyzers)
        self.contact: list[tuple[str, str]] = []  # (kind, net) built after the whole-frame metrics
        self._lpips: dict[str, LPIPS] = {}        # shared by lpips_<net>, lpips_<net>_official, lpips_<net>_contact

    def lpips_net(self, net: str) -> LPIPS:
        if net not in self._lpips:
            self._lpips[net] = LPIPS(net=net, standin="lpips" in self.standins, device=self.device)
        return self._lpips[net]

    def frame(self, metric: Metric) -> None:
        self.suite.frame_metrics.append(metric)


Factory = Callable[[_Builder, str], None]
METRIC_FACTORIES: dict[str, Factory] = {}   # metric name -> factory adding it to the suite
FAMILY_FACTORIES: dict[str, Factory] = {}   # family (``lpips``, ``id``, ``akd`` …) -> factory for its names
# weights(name, protocol, standins) -> registry names (eval.weights) the factory's metric loads; read by eval.preflight
Weights = Callable[[str, Any, set], list]
FACTORY_WEIGHTS: dict[Factory, Weights] = {}


def no_weights(name: str, protocol: Any, standins: set) -> list:
    """Weights of a metric computed from the frames alone: none."""
    return []


def metric(*names: str, family: bool = False, weights: Weights = no_weights) -> Callable[[Factory], Factory]:
    """Register a factory for exact metric ``names`` (or, ``family=True``, for every name of these families), with
    ``weights`` saying which weight files that factory loads for a protocol."""
    def register(fn: Factory) -> Factory:
        for n in names:
            (FAMILY_FACTORIES if family else METRIC_FACTORIES)[n] = fn
        FACTORY_WEIGHTS[fn] = weights
        return fn
    return register


def weights_for(name: str, protocol: Any, standins: set) -> list:
    """The weights metric ``name`` loads under ``protocol`` (its factory's declaration; none for an unknown name)."""
    fn = factory_for(name)
    return [] if fn is None else FACTORY_WEIGHTS[fn](name, protocol, standins)


@metric("l1")
def _l1(b: _Builder, name: str) -> None:
    b.frame(L1())


@metric("psnr")
def _psnr(b: _Builder, name: str) -> None:
    b.frame(PSNR(float(b.protocol.get("psnr_mse_floor", 1e-10))))


@metric("tdiff_l1")
def _tdiff_l1(b: _Builder, name: str) -> None:
    b.frame(TemporalDiffL1())


@metric("ssim")
def _ssim(b: _Builder, name: str) -> None:
    b.frame(SSIM())


@metric("l1_contact", "ssim_contact", "contact_rate")
def _contact(b: _Builder, name: str) -> None:
    b.contact.append(("rate" if name == "contact_rate" else name.split("_")[0], ""))


@metric("akd_gt")
def _akd_gt(b: _Builder, name: str) -> None:
    b.frame(AKDGroundTruth())


@metric("akd_synthlm")
def _akd_synthlm(b: _Builder, name: str) -> None:
    from eval.synth_landmarks import AKDSynthLandmarks

    m = AKDSynthLandmarks(int(b.protocol.resolution), locator=b.keypoint_locator, device=b.device)
    b.frame(m)
    b.suite.facts["synth_landmarks"] = m.facts


@metric("fid", weights=lambda name, protocol, standins: _preflight().fid_weights(name, protocol, standins))
def _fid(b: _Builder, name: str) -> None:
    from eval.fid import FID

    p = b.protocol
    b.suite.dataset_metrics.append(FID(p.fid_backend, p.fid_num_samples, standin="fid" in b.standins,
                                       device=b.device, weights_sha256=b.pins.get(p.fid_backend)))


@metric("fvd", weights=lambda name, protocol, standins: _preflight().fvd_weights(name, protocol, standins))
def _fvd(b: _Builder, name: str) -> None:
    from eval.fvd import FVD

    p = b.protocol
    b.suite.dataset_metrics.append(FVD(p.get("fvd_backend", "i3d_torchscript"), int(p.get("fvd_clip_len", 16)),
                                       standin="fvd" in b.standins, device=b.device,
                                       weights_sha256=b.pins.get(p.get("fvd_backend"))))


@metric(*THREEDMM_METRICS, weights=lambda name, protocol, standins: _preflight().threedmm_weights(name, protocol, standins))
def _threedmm(b: _Builder, name: str) -> None:
    from eval.threedmm import build_threedmm_metric

    m = build_threedmm_metric(name, b.protocol, b.pins, device=b.device)
    b.frame(m)
    b.suite.facts.setdefault("threedmm", {})[m.name] = m.facts   # regressor, detector, frames without a face


@metric("lpips", family=True, weights=lambda name, protocol, standins: _preflight().lpips_weights(name, protocol, standins))
def _lpips(b: _Builder, name: str) -> None:
    """``lpips`` / ``lpips_<net>`` (net from the name, else ``lpips_net``); ``lpips[_<net>]_official``: the same
    network on [0, 1] inputs (MRFA's ``reconstruction.py``); ``lpips[_<net>]_contact``: the contact-region LPIPS."""
    default = b.protocol.get("lpips_net", "alex")
    parts = name.split("_")
    if name.endswith("_official"):
        net = parts[1] if len(parts) == 3 else default
        base = b.lpips_net(net)
        b.frame(LPIPS(net=net, standin=base.standin, device=b.device, official_range=True, model=base.model))
    elif name.endswith("_contact"):
        b.contact.append(("lpips", parts[1] if len(parts) == 3 else default))
    else:
        b.frame(b.lpips_net(name.split("_", 1)[1] if "_" in name else default))


@metric(*FACE_FAMILIES, family=True, weights=lambda name, protocol, standins: _preflight().face_weights(name, protocol, standins))
def _face(b: _Builder, name: str) -> None:
    """``<family>[_<backend>]``: no backend → the protocol's ``id_backend`` / ``landmark_backend`` (``auto``:
    insightface when its weights are present, else dlib); ``arcface`` → the protocol's ``arcface_model``."""
    p = b.protocol
    arcface_model = str(p.get("arcface_model", DEFAULT_ARCFACE_MODEL))
    fam, backend = split_face_name(name)
    if backend is None:
        kind = "landmarks" if fam in ("akd", "mkr") else "id"
        backend = _face_backend(kind, p.get("id_backend" if kind == "id" else "landmark_backend", "auto"),
                                arcface_model)
    if backend == "arcface":    # the protocol's ArcFace model names the backend (id_arcface_glintr100)
        backend = arcface_backend_name(arcface_model)
    b.face_requests[f"{fam}_{backend}"] = backend


def _preflight():
    """eval.preflight, imported when a weights declaration is read (it imports this module for the registry)."""
    import eval.preflight
    return eval.preflight


def factory_for(name: str) -> Optional[Factory]:
    """The factory of metric ``name``: its own, else its family's; None for an unknown name."""
    if name in METRIC_FACTORIES:
        return METRIC_FACTORIES[name]
    family = name.split("_")[0]
    if family in FAMILY_FACTORIES:
        return FAMILY_FACTORIES[family]
    return FAMILY_FACTORIES.get(split_face_name(name)[0])


def metric_choices() -> str:
    """The names a protocol may list, for error messages."""
    return ", ".join([*METRIC_FACTORIES, *(f"{f}[_...]" for f in FAMILY_FACTORIES)])


def build_suite(protocol, device="cpu", keypoint_locator=None, identity_embedder=None) -> Suite:
    """Each name of ``protocol.metrics`` through its factory (``METRIC_FACTORIES``, else ``FAMILY_FACTORIES``),
    then the contact-region and face metrics they requested. ``keypoint_locator`` (frames → N×K×2) replaces the
    SynthFaces landmark locator of ``akd_synthlm``; ``identity_embedder`` (frames → N×d) the SynthFaces identity
    embedding of the ``synthid`` backend (tests)."""
    from eval.regions import ContactMetric

    b = _Builder(protocol, device, keypoint_locator)
    for name in list(protocol.metrics):
        factory = factory_for(name)
        if factory is None:
            raise ValueError(f"protocol {protocol.get('name')}: unknown metric {name!r} in eval_protocol.metrics "
                             f"(one of: {metric_choices()})")
        factory(b, name)
    suite = b.suite
    radius, crop = int(protocol.get("contact_radius", 3)), int(protocol.get("contact_crop", 64))
    for kind, net in b.contact:
        suite.frame_metrics.append(ContactMetric(kind, radius, b.lpips_net(net) if kind == "lpips" else None, crop))
    if b.face_requests:
        from eval.faces import build_face_metrics

        face_metrics = build_face_metrics(list(b.face_requests), protocol, b.pins, identity_embedder=identity_embedder,
                                          device=device, standins=b.standins)
        suite.frame_metrics.extend(face_metrics)
        for m in face_metrics:
            if m.backend_name == "synthid" and getattr(m.analyzer, "facts", None):
                suite.facts["synth_identity"] = m.analyzer.facts
            elif isinstance(getattr(m.analyzer, "facts", None), dict) and "providers_requested" in m.analyzer.facts:
                # onnxruntime providers per insightface analyzer (the dict fills in as sessions load)
                suite.facts.setdefault("onnx_providers", {})[m.analyzer.name] = m.analyzer.facts
    return suite
