"""Identity leakage (id_to_driver / id_to_source / id_leakage / id_leakage_missing): values, shared analyses,
missing faces as NaN + rate, the suite's name resolution, and dlib on SynthFaces cross-identity renders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from eval.faces import FaceMetric, FaceResult, split_face_name
from eval.metrics import FrameBatch, higher_is_better

LEAK = ["id_to_source", "id_to_driver", "id_leakage", "id_leakage_missing"]


class StubFaces:
    """An analyzer whose 'embedding' is the image's mean colour (a face is 'missing' when the image is black)."""

    name = "stub"

    def __init__(self):
        self.calls = 0

    def analyze(self, rgb, need_embedding=True):
        self.calls += 1
        e = rgb.reshape(-1, 3).mean(0).astype(np.float64)
        return FaceResult(None, None) if e.sum() == 0 else FaceResult(None, e)


def _img(rgb):
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, 8, 8).clone()


def _cos(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def _metrics(analyzer, families):
    return {f: FaceMetric(f, "stub", analyzer) for f in families}


@pytest.mark.parametrize("target_kind", ["other", "none", "driving"])
def test_leakage_values_missing_frames_and_shared_analyses(target_kind):
    src, drv = [0.9, 0.1, 0.1], [0.1, 0.1, 0.9]
    preds = [[0.8, 0.2, 0.1], [0.2, 0.1, 0.8], [0, 0, 0]]          # source-like, driver-like, no face
    drivings = [drv, drv, drv]
    pred = torch.stack([_img(p) for p in preds])
    driving = torch.stack([_img(d) for d in drivings])
    target = {"other": torch.stack([_img([0.5, 0.5, 0.5])] * 3), "none": None, "driving": driving.clone()}[target_kind]
    fb = FrameBatch(pred, target, source=_img(src), driving=driving)
    stub = StubFaces()
    ms = _metrics(stub, LEAK + ["akd"])
    out = {f: m.frames(fb) for f, m in ms.items() if f != "akd"}
    ms["akd"].frames(fb)
    q = lambda v: np.round(np.asarray(v) * 255) / 255   # noqa: E731  (frames go through uint8)
    for i in range(2):
        assert out["id_to_source"][i] == pytest.approx(_cos(q(preds[i]), q(src)), abs=1e-9)
        assert out["id_to_driver"][i] == pytest.approx(_cos(q(preds[i]), q(drv)), abs=1e-9)
        assert out["id_leakage"][i] == pytest.approx(out["id_to_driver"][i] - out["id_to_source"][i], abs=1e-12)
    assert out["id_leakage"][0] < 0 < out["id_leakage"][1]          # the driver-like output leaks
    # no face in the output: NaN (skipped by the means), never 0, and counted by the missing rate
    assert all(np.isnan(out[f][2]) for f in ("id_to_source", "id_to_driver", "id_leakage"))
    assert list(out["id_leakage_missing"]) == [0.0, 0.0, 1.0]
    # one analysis per frame and view: pred (3) + driving (3) + source (1); without a target the driving frames are
    # the reference frames akd reads, analysed once for both (as in self mode, target == driving); with another
    # target (synth_cross ground truth) akd analyses the target (3 more)
    assert stub.calls == 3 + 3 + 1 + (3 if target_kind == "other" else 0)


def test_missing_source_face_makes_every_frame_missing():
    pred = torch.stack([_img([0.5, 0.2, 0.2])] * 2)
    fb = FrameBatch(pred, None, source=torch.zeros(3, 8, 8), driving=pred.clone())
    ms = _metrics(StubFaces(), LEAK)
    assert np.isnan(ms["id_leakage"].frames(fb)).all() and np.isnan(ms["id_to_source"].frames(fb)).all()
    assert np.allclose(ms["id_to_driver"].frames(fb), 1.0)
    assert list(ms["id_leakage_missing"].frames(fb)) == [1.0, 1.0]


def test_names_directions_and_suite_resolution(monkeypatch):
    import eval.faces
    from eval.suite import build_suite

    monkeypatch.setattr(eval.faces, "DlibFaces", lambda **kw: StubFaces())   # no model loading: names only

    assert split_face_name("id_leakage_missing_dlib") == ("id_leakage_missing", "dlib")
    assert split_face_name("id_to_driver") == ("id_to_driver", None)
    assert split_face_name("id_dlib") == ("id", "dlib")
    assert higher_is_better("id_leakage_dlib") is False and higher_is_better("id_leakage_missing_dlib") is False
    assert higher_is_better("id_to_driver_arcface") is False and higher_is_better("id_to_source_dlib") is True
    assert higher_is_better("id_dlib") is True
    proto = OmegaConf.create({"name": "t", "metrics": LEAK + ["id"], "id_backend": "dlib", "face_upsample": 1})
    suite = build_suite(proto)
    assert [m.name for m in suite.frame_metrics] == [f"{f}_dlib" for f in LEAK] + ["id_dlib"]
    assert len({id(m.analyzer) for m in suite.frame_metrics}) == 1     # one analyzer, shared
    with pytest.raises(ValueError, match="identity"):
        build_suite(OmegaConf.create({"name": "t", "metrics": ["id_leakage_insightface"]}))


@pytest.mark.slow
def test_dlib_leakage_on_synthfaces_cross_identity():
    """Identity A doing clip B's motion (the synth_cross ground truth) vs. B itself: dlib (face_upsample 2, as the
    synthfaces_cross protocol) finds the 64² cartoon faces and the A-render leaks less than the B-render."""
    from datamodules.synthfaces import render_clip, sample_identity, sample_motion
    from eval.faces import build_face_metrics

    rng = np.random.default_rng(5)
    ida, idb = sample_identity(rng), sample_identity(rng)
    motion_b = sample_motion(rng, 3)
    t = lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255   # noqa: E731
    a_src = t(render_clip(ida, sample_motion(rng, 1), 64)[0])[0]
    a_does_b = t(render_clip(ida, motion_b, 64)[0])
    b = t(render_clip(idb, motion_b, 64)[0])
    ms = {m.family: m for m in build_face_metrics([f"{f}_dlib" for f in LEAK], OmegaConf.create({"face_upsample": 2}))}
    good = FrameBatch(a_does_b, a_does_b, source=a_src, driving=b)      # a model that keeps A's identity
    leaky = FrameBatch(b, a_does_b, source=a_src, driving=b)            # a model that copies the driver
    lg, ll = ms["id_leakage"].frames(good), ms["id_leakage"].frames(leaky)
    miss = ms["id_leakage_missing"].frames(good)
    assert np.isnan(lg).sum() == miss.sum() and miss.mean() < 0.5       # most faces found at upsample 2
    assert np.nanmean(lg) < 0 < np.nanmean(ll)
    assert np.allclose(ms["id_to_driver"].frames(leaky)[~np.isnan(ll)], 1.0)  # output == driver: cos 1
