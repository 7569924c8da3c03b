"""MRFA's probe declaration: keypoint-motion errors of the prior vs the refined motion on the protocol's
self-reenactment test set (SynthFaces ground-truth keypoints), in pixels.

* ``motion_err_prior`` / ``motion_err_refined`` — ‖T(d_k) − s_k‖ before / after the K refinement steps: lower is
  better;
* ``motion_err_zero`` — the same for the identity motion (how much motion there is to explain): a property of the
  data, no direction;
* ``refine_shift`` — how far the refiner moves the motion: a property of the model, no direction.

Transitional: the computation still lives in the model (``MRFA.eval_diagnostics`` →
``lit_models/mrfa/diagnostics.py``, which builds its data from ``datamodules``). The probe calls it until the MRFA
work moves it here: ``diagnose`` / ``keypoint_motion_error`` and the ``python -m … RUN_DIR`` CLI into this module
(or ``eval/probes/mrfa_motion.py``), ``run`` below building the self-test stream from ``datamodule.eval_dataset``
as ``MRFA.eval_diagnostics`` does today and calling ``model.kp_detector`` / ``model.generate``; then
``MRFA.eval_diagnostics`` and ``lit_models/mrfa/diagnostics.py`` go, and their PENDING entries in
``tests/test_architecture.py`` with them.
"""
from __future__ import annotations

from eval.probes.base import Probe, register_probe


def run(model, datamodule, protocol) -> dict[str, float]:
    diagnostics = getattr(model, "eval_diagnostics", None)
    return diagnostics(datamodule, protocol) if callable(diagnostics) else {}


PROBE = register_probe(Probe(
    name="mrfa.keypoint_motion", methods=("mrfa",), run=run,
    directions={"motion_err_prior": False, "motion_err_refined": False, "motion_err_zero": None,
                "refine_shift": None}))
