"""3DMM expression / pose errors (X-NeMo's AED / APD; X-Portrait's expression and pose error): the regressor chosen,
its weights, and the metric names — without an implementation yet.

Regressor: Deep3DFaceRecon (Deng et al. 2019, ``sicxu/Deep3DFaceRecon_pytorch``, ResNet-50 → BFM 2009 coefficients:
80 identity, 64 expression, 80 texture, 3 rotation angles, 27 lighting, 3 translation), the original release
(``epoch_20.pth``), registered as ``deep3dfacerecon_epoch20`` and ``bfm09_front_face`` in ``eval.weights``. Why this
one, with sources, is in ``eval/README.md`` ("3DMM expression / pose errors").

Metrics (per frame t, generated x̂_t vs reference x_t — the target, else the driving frame):

* ``aed_3dmm_deep3d``  — mean |exp(x̂_t) − exp(x_t)| over the 64 expression coefficients
* ``apd_3dmm_deep3d``  — mean |pose(x̂_t) − pose(x_t)| over the pose coefficients (3 angles + 3 translations)
* ``pose_deg_deep3d``  — mean |angle(x̂_t) − angle(x_t)| over yaw / pitch / roll, in degrees

Status: building any of them resolves both weight files first (``MissingWeightsError`` naming the file, where to
put it and the URL — before any work). With the files present it still stops before work: the coefficient
regression is not implemented here, because no run of the reference code (Deep3DFaceRecon_pytorch's
``models/facerecon_model.py`` with its ``util/preprocess.py`` 5-point alignment) is available to verify it against,
and a 3DMM number that does not equal the reference code is not reported.
"""
from __future__ import annotations

from typing import Optional

THREEDMM_WEIGHTS = ("deep3dfacerecon_epoch20", "bfm09_front_face")
REFERENCE = "sicxu/Deep3DFaceRecon_pytorch (models/facerecon_model.py, util/preprocess.py)"


class ThreeDMMUnavailable(RuntimeError):
    """A 3DMM metric was requested but cannot be computed (verified implementation missing)."""


def build_threedmm_metric(name: str, protocol, pins: Optional[dict] = None, device="cpu"):
    """Resolve the regressor's weights (absent → ``MissingWeightsError``), then refuse: see the module docstring."""
    from eval.weights import resolve

    pins = pins or {}
    for w in THREEDMM_WEIGHTS:
        resolve(w, pins.get(w))
    raise ThreeDMMUnavailable(
        f"eval_protocol.metrics: {name!r} needs the Deep3DFaceRecon coefficient regressor, which portraitlab does "
        f"not implement yet: it must equal the reference code ({REFERENCE}) on real frames before it reports a "
        "number. Remove the metric from the protocol, or add the implementation with its golden test.")
