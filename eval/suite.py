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
from typing import Any

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


def build_suite(protocol, device="cpu", keypoint_locator=None, identity_embedder=None) -> Suite:
    """``keypoint_locator`` (frames → N×K×2) replaces the SynthFaces landmark locator of ``akd_synthlm``;
    ``identity_embedder`` (frames → N×d) the SynthFaces identity embedding of the ``synthid`` backend (tests)."""
    from eval.regions import ContactMetric

    names = list(protocol.metrics)
    standins = set(protocol.get("standin_metrics", []) or [])
    pins = dict(protocol.get("weights", {}) or {})
    suite = Suite()
    face_requests: dict[str, str] = {}
    lpips_nets: dict[str, LPIPS] = {}      # one network per net, shared by lpips_<net> and lpips_<net>_contact
    contact: list[tuple[str, str]] = []    # (kind, net) built after the whole-frame metrics
    radius, crop = int(protocol.get("contact_radius", 3)), int(protocol.get("contact_crop", 64))

    def lpips_net(net: str) -> LPIPS:
        if net not in lpips_nets:
            lpips_nets[net] = LPIPS(net=net, standin="lpips" in standins, device=device)
        return lpips_nets[net]

    for name in names:
        family = name.split("_")[0]
        if name == "l1":
            suite.frame_metrics.append(L1())
        elif name == "psnr":
            suite.frame_metrics.append(PSNR(float(protocol.get("psnr_mse_floor", 1e-10))))
        elif name == "tdiff_l1":
            suite.frame_metrics.append(TemporalDiffL1())
        elif name == "ssim":
            suite.frame_metrics.append(SSIM())
        elif name in ("l1_contact", "ssim_contact", "contact_rate"):
            contact.append(("rate" if name == "contact_rate" else family, ""))
        elif family == "lpips" and name.endswith("_official"):
            net = name.split("_")[1] if name.count("_") == 2 else protocol.get("lpips_net", "alex")
            base = lpips_net(net)
            suite.frame_metrics.append(LPIPS(net=net, standin=base.standin, device=device, official_range=True,
                                             model=base.model))
        elif family == "lpips" and name.endswith("_contact"):
            parts = name.split("_")
            contact.append(("lpips", parts[1] if len(parts) == 3 else protocol.get("lpips_net", "alex")))
        elif family == "lpips":
            net = name.split("_", 1)[1] if "_" in name else protocol.get("lpips_net", "alex")
            suite.frame_metrics.append(lpips_net(net))
        elif name == "fid":
            from eval.fid import FID

            suite.dataset_metrics.append(FID(protocol.fid_backend, protocol.fid_num_samples, standin="fid" in standins,
                                             device=device, weights_sha256=pins.get(protocol.fid_backend)))
        elif name == "fvd":
            from eval.fvd import FVD

            suite.dataset_metrics.append(FVD(protocol.get("fvd_backend", "i3d_torchscript"),
                                             int(protocol.get("fvd_clip_len", 16)), standin="fvd" in standins,
                                             device=device, weights_sha256=pins.get(protocol.get("fvd_backend"))))
        elif name == "akd_gt":
            suite.frame_metrics.append(AKDGroundTruth())
        elif name == "akd_synthlm":
            from eval.synth_landmarks import AKDSynthLandmarks

            m = AKDSynthLandmarks(int(protocol.resolution), locator=keypoint_locator, device=device)
            suite.frame_metrics.append(m)
            suite.facts["synth_landmarks"] = m.facts
        elif name in THREEDMM_METRICS:
            from eval.threedmm import build_threedmm_metric

            suite.frame_metrics.append(build_threedmm_metric(name, protocol, pins, device=device))
        elif family in FACE_FAMILIES or split_face_name(name)[0] in FACE_FAMILIES:
            fam, backend = split_face_name(name)
            if backend is None:
                kind = "landmarks" if fam in ("akd", "mkr") else "id"
                backend = _face_backend(kind, protocol.get("id_backend" if kind == "id" else "landmark_backend",
                                                           "auto"),
                                        str(protocol.get("arcface_model", DEFAULT_ARCFACE_MODEL)))
            if backend == "arcface":    # the protocol's ArcFace model names the backend (id_arcface_glintr100)
                backend = arcface_backend_name(str(protocol.get("arcface_model", DEFAULT_ARCFACE_MODEL)))
            face_requests[f"{fam}_{backend}"] = backend
        else:
            raise ValueError(f"protocol {protocol.get('name')}: unknown metric {name!r}")
    for kind, net in contact:
        suite.frame_metrics.append(ContactMetric(kind, radius, lpips_net(net) if kind == "lpips" else None, crop))
    if face_requests:
        from eval.faces import build_face_metrics

        face_metrics = build_face_metrics(list(face_requests), protocol, pins, identity_embedder=identity_embedder,
                                          device=device, standins=standins)
        suite.frame_metrics.extend(face_metrics)
        for m in face_metrics:
            if m.backend_name == "synthid" and getattr(m.analyzer, "facts", None):
                suite.facts["synth_identity"] = m.analyzer.facts
            elif isinstance(getattr(m.analyzer, "facts", None), dict) and "providers_requested" in m.analyzer.facts:
                # onnxruntime providers per insightface analyzer (the dict fills in as sessions load)
                suite.facts.setdefault("onnx_providers", {})[m.analyzer.name] = m.analyzer.facts
    return suite
