"""Build a protocol's metric suite: resolve metric names to implementations and backends, once.

Names a protocol may list: ``l1 psnr ssim lpips fid id aed akd mkr akd_gt`` (backends resolved from the protocol:
``lpips`` → ``lpips_alex``/``lpips_vgg``; ``id``/``aed`` → ``*_arcface``/``*_dlib``; ``akd``/``mkr`` →
``*_insightface``/``*_dlib``), or an explicit backend name (``id_dlib``). Metrics backed by a stand-in network carry
``_STANDIN`` and the suite reports ``standin=True``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eval.metrics import L1, PSNR, SSIM, LPIPS, AKDGroundTruth, FrameBatch, Metric

FACE_FAMILIES = ("id", "aed", "akd", "mkr")


@dataclass
class Suite:
    frame_metrics: list[Metric] = field(default_factory=list)
    dataset_metrics: list[Any] = field(default_factory=list)   # eval.fid.FID

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


def _face_backend(kind: str, requested: str) -> str:
    """``auto`` → the insightface backend when its weights are present, else dlib."""
    from eval.weights import REGISTRY

    if requested != "auto":
        return requested
    need = ["arcface_w600k_r50", "scrfd_det_10g"] if kind == "id" else ["scrfd_det_10g", "insightface_1k3d68"]
    return ("arcface" if kind == "id" else "insightface") if all(REGISTRY[n].present() for n in need) else "dlib"


def build_suite(protocol, device="cpu") -> Suite:
    names = list(protocol.metrics)
    standins = set(protocol.get("standin_metrics", []) or [])
    pins = dict(protocol.get("weights", {}) or {})
    suite = Suite()
    face_requests: dict[str, str] = {}
    for name in names:
        family = name.split("_")[0]
        if name == "l1":
            suite.frame_metrics.append(L1())
        elif name == "psnr":
            suite.frame_metrics.append(PSNR())
        elif name == "ssim":
            suite.frame_metrics.append(SSIM())
        elif family == "lpips":
            net = name.split("_", 1)[1] if "_" in name else protocol.get("lpips_net", "alex")
            suite.frame_metrics.append(LPIPS(net=net, standin="lpips" in standins, device=device))
        elif name == "fid":
            from eval.fid import FID

            suite.dataset_metrics.append(FID(protocol.fid_backend, protocol.fid_num_samples, standin="fid" in standins,
                                             device=device, weights_sha256=pins.get(protocol.fid_backend)))
        elif name == "akd_gt":
            suite.frame_metrics.append(AKDGroundTruth())
        elif family in FACE_FAMILIES:
            if "_" in name:
                backend = name.split("_", 1)[1]
            elif family in ("id", "aed"):
                backend = _face_backend("id", protocol.get("id_backend", "auto"))
            else:
                backend = _face_backend("landmarks", protocol.get("landmark_backend", "auto"))
            face_requests[f"{family}_{backend}"] = backend
        else:
            raise ValueError(f"protocol {protocol.get('name')}: unknown metric {name!r}")
    if face_requests:
        from eval.faces import build_face_metrics

        suite.frame_metrics.extend(build_face_metrics(list(face_requests), protocol, pins))
    return suite
