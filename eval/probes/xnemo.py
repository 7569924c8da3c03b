"""X-NeMo's probe — motion sensitivity of an animation model: does the output follow the driving frames or only
the source? (Moved from ``lit_models/xnemo/diagnostics.py``: the probe renders SynthFaces, which a model may not.)

With the sampling noise fixed (``animate`` seeds it from ``sample_seed``), for sources S_A, S_B and driving clips
D_a, D_b (ideally of S_A's own identity, so that swapping them changes only the motion):

* ``motion``  = mean |G(S_A, D_a) − G(S_A, D_b)|   — what swapping the driving clip changes in the output;
* ``source``  = mean |G(S_A, D_a) − G(S_B, D_a)|   — what swapping the source changes;
* ``ratio``   = motion / source.

With ground truth (SynthFaces renders X_{A,a} = A doing motion a …) each is also divided by what it *should* be —
``motion_gain`` = motion / mean |X_{A,a} − X_{A,b}|, ``source_gain`` = source / mean |X_{A,a} − X_{B,a}|: a model that
ignores its motion condition has ``motion_gain`` ≈ 0, a perfect one 1 for both. ``motion_alignment`` = cosine between
G(S_A, D_a) − G(S_A, D_b) and X_{A,a} − X_{A,b} (per clip, averaged): whether the output moves the way the truth does
(1) or merely changes (≈ 0) — a blurry model can be well aligned at a low gain. Works for any ``AnimationModule``
(only ``animate`` is called); the model knows nothing of where the frames come from.

Registered as the probe ``xnemo.motion_sensitivity`` (``eval.probes``) for ``model.cfg.name == "xnemo"``: in a run's
``metrics.json`` as ``motion_gain`` / ``source_gain`` / ``motion_ratio`` (ideal 1 or a property of the model: no
better direction) and ``motion_alignment`` (higher is better); every key carries ``_STANDIN`` when the model's
output depends on a stand-in network (``model.standin_output``).
"""
from __future__ import annotations

from typing import Optional

import torch

from eval.probes.base import STANDIN_SUFFIX, Probe, register_probe


@torch.no_grad()
def motion_sensitivity(model, source_a: torch.Tensor, driving_a: torch.Tensor, driving_b: torch.Tensor,
                       source_b: torch.Tensor, truth: Optional[dict[str, torch.Tensor]] = None,
                       **animate_kwargs) -> dict[str, float]:
    """source_* B×3×H×W, driving_* B×T×3×H×W in [0, 1]. ``truth`` (optional): ``{"Aa", "Ab", "Ba"}`` B×T×3×H×W
    ground-truth clips (A doing a, A doing b, B doing a) for the normalised gains and the reconstruction error."""
    out_aa = model.animate(source_a, driving_a, **animate_kwargs)
    out_ab = model.animate(source_a, driving_b, **animate_kwargs)
    out_ba = model.animate(source_b, driving_a, **animate_kwargs)
    res = {"motion": float((out_aa - out_ab).abs().mean()), "source": float((out_aa - out_ba).abs().mean())}
    res["ratio"] = res["motion"] / max(res["source"], 1e-12)
    if truth is not None:
        res["motion_ideal"] = float((truth["Aa"] - truth["Ab"]).abs().mean())
        res["source_ideal"] = float((truth["Aa"] - truth["Ba"]).abs().mean())
        res["motion_gain"] = res["motion"] / max(res["motion_ideal"], 1e-12)
        res["source_gain"] = res["source"] / max(res["source_ideal"], 1e-12)
        # is the change in the right direction? cosine between the output's and the truth's change, per clip
        d_out, d_true = (out_aa - out_ab).flatten(1), (truth["Aa"] - truth["Ab"]).flatten(1)
        res["motion_alignment"] = float(torch.nn.functional.cosine_similarity(d_out, d_true, dim=1, eps=1e-12).mean())
        res["l1_Aa"] = float((out_aa - truth["Aa"]).abs().mean())
        res["l1_Ab"] = float((out_ab - truth["Ab"]).abs().mean())
        # the output for motion b is closer to the b truth than the a truth would be: motion is transferred
        res["l1_Ab_vs_Aa_truth"] = float((out_ab - truth["Aa"]).abs().mean())
    return res


def synth_probe(num_pairs: int = 4, num_frames: int = 4, resolution: int = 64, motion_scale: float = 1.0,
                seed: int = 12345) -> dict:
    """SynthFaces probe clips for :func:`motion_sensitivity` (imports the renderer lazily):
    identities A, B and motions a, b per pair; sources are frame 0 of A (B) doing a neutral pose."""
    import numpy as np

    from datamodules.synthfaces import neutral_motion, render_clip, sample_identity, sample_motion

    rng = np.random.default_rng(seed)
    t = lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255   # noqa: E731
    keys = ("src_A", "src_B", "Aa", "Ab", "Ba")
    out = {k: [] for k in keys}
    for _ in range(num_pairs):
        A, B = sample_identity(rng), sample_identity(rng)
        a = sample_motion(rng, num_frames, motion_scale=motion_scale)
        b = sample_motion(rng, num_frames, motion_scale=motion_scale)
        out["src_A"].append(t(render_clip(A, neutral_motion(1), resolution)[0])[0])
        out["src_B"].append(t(render_clip(B, neutral_motion(1), resolution)[0])[0])
        out["Aa"].append(t(render_clip(A, a, resolution)[0]))
        out["Ab"].append(t(render_clip(A, b, resolution)[0]))
        out["Ba"].append(t(render_clip(B, a, resolution)[0]))
    return {k: torch.stack(v) for k, v in out.items()}


def probe_sensitivity(model, probe: dict, **animate_kwargs) -> dict[str, float]:
    """:func:`motion_sensitivity` on a :func:`synth_probe` set (driving = A's own clips, so only motion differs)."""
    return motion_sensitivity(model, probe["src_A"], probe["Aa"], probe["Ab"], probe["src_B"],
                              truth={k: probe[k] for k in ("Aa", "Ab", "Ba")}, **animate_kwargs)


def synthfaces_diagnostics(model, datamodule, num_pairs: int = 4, num_frames: int = 4, seed: int = 12345,
                           **animate_kwargs) -> dict[str, float]:
    """Motion reliance of ``model`` for a run's metrics: :func:`probe_sensitivity` on probe clips rendered like the
    datamodule's SynthFaces (its ``synth.resolution`` and ``synth.motion_scale``; new identities, fixed ``seed``, so
    every run of a sweep sees the same probe) → ``motion_gain``, ``motion_alignment``, ``source_gain``,
    ``motion_ratio``; {} when the
    datamodule is not SynthFaces (no ground truth to normalise by)."""
    synth = getattr(getattr(datamodule, "cfg", None), "synth", None)
    if synth is None:
        return {}
    get = (lambda k, d: synth.get(k, d)) if hasattr(synth, "get") else (lambda k, d: getattr(synth, k, d))
    probe = synth_probe(num_pairs, num_frames, int(get("resolution", 64)), float(get("motion_scale", 1.0)), seed)
    dev = next(model.parameters()).device
    res = probe_sensitivity(model, {k: v.to(dev) for k, v in probe.items()}, **animate_kwargs)
    return {"motion_gain": res["motion_gain"], "motion_alignment": res["motion_alignment"],
            "source_gain": res["source_gain"], "motion_ratio": res["ratio"]}


def run(model, datamodule, protocol) -> dict[str, float]:
    """The probe: :func:`synthfaces_diagnostics` with its default probe set (4 pairs × 4 frames, seed 12345), keys
    suffixed ``_STANDIN`` when ``model.standin_output`` (the motion cross-attention reads a random stand-in CLIP)."""
    res = synthfaces_diagnostics(model, datamodule)
    if getattr(model, "standin_output", False):
        res = {f"{k}{STANDIN_SUFFIX}": v for k, v in res.items()}
    return res


PROBE = register_probe(Probe(
    name="xnemo.motion_sensitivity", methods=("xnemo",), run=run,
    # ideal 1 (the output changes as much as the ground truth does), not "more": no better direction
    directions={"motion_gain": None, "source_gain": None, "motion_ratio": None, "motion_alignment": True}))
