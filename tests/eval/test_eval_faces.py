"""Face metrics (dlib backend, offline) on real portraits, and AKD on SynthFaces' ground-truth keypoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from eval.metrics import FrameBatch, keypoint_distance

SIZE = 192
MARGIN = 24


def _portrait(root, name: str, shift: int = 0) -> torch.Tensor:
    """Central square of a portrait, shifted right by ``shift`` source pixels, resized to SIZE²."""
    from PIL import Image

    im = Image.open(root / "portraits" / name).convert("RGB")
    w, h = im.size
    s = min(w, h) - 2 * MARGIN          # same crop size for every shift: a pure translation
    x0, y0 = (w - s) // 2 + shift, (h - s) // 2
    im = im.crop((x0, y0, x0 + s, y0 + s)).resize((SIZE, SIZE), Image.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def dlib_metrics():
    from eval.faces import build_face_metrics

    return {m.name: m for m in build_face_metrics(["id_dlib", "aed_dlib", "akd_dlib", "mkr_dlib"],
                                                  OmegaConf.create({"face_upsample": 1}))}


@pytest.mark.fixtures
def test_dlib_identity_same_person_closer_than_different(real_fixtures, dlib_metrics):
    astro = _portrait(real_fixtures, "astronaut.png")
    shifted = _portrait(real_fixtures, "astronaut.png", shift=24)
    other = _portrait(real_fixtures, "single_face.jpg")
    blank = torch.full_like(astro, 0.5)
    # generated frames: [shifted astronaut, astronaut itself, a frame with no face]; target: the astronaut
    fb = FrameBatch(torch.stack([shifted, astro, blank]), torch.stack([astro, astro, astro]), source=astro)
    vals = {name: m.frames(fb) for name, m in dlib_metrics.items()}
    fb_other = FrameBatch(torch.stack([shifted]), torch.stack([astro]), source=other)
    id_other = dlib_metrics["id_dlib"].frames(fb_other)[0]

    assert vals["id_dlib"][0] > id_other + 0.05, (vals["id_dlib"][0], id_other)
    assert vals["id_dlib"][1] == pytest.approx(1.0, abs=1e-9)
    assert vals["aed_dlib"][1] == pytest.approx(0.0, abs=1e-9) and vals["aed_dlib"][0] > 0
    # AKD: 0 on identical inputs; ≈ the image displacement (24 px of the 512² source → 24·SIZE/488 px) when shifted
    assert vals["akd_dlib"][1] == pytest.approx(0.0, abs=1e-9)
    expected = 24 * SIZE / (512 - 2 * MARGIN)
    assert vals["akd_dlib"][0] == pytest.approx(expected, abs=2.0), (vals["akd_dlib"][0], expected)
    # no face in the generated frame: undefined for id/aed/akd, and a missing-keypoint event for MKR
    assert np.isnan(vals["id_dlib"][2]) and np.isnan(vals["akd_dlib"][2])
    assert list(vals["mkr_dlib"]) == [0.0, 0.0, 1.0]


@pytest.mark.fixtures
def test_face_analysis_shared_between_metrics(real_fixtures, dlib_metrics, monkeypatch):
    """One detection / landmark / embedding pass per frame, whatever the number of face metrics."""
    astro = _portrait(real_fixtures, "astronaut.png")
    analyzer = dlib_metrics["id_dlib"].analyzer
    assert all(m.analyzer is analyzer for m in dlib_metrics.values())
    calls = []
    orig = analyzer.analyze
    monkeypatch.setattr(analyzer, "analyze", lambda rgb, **kw: calls.append(1) or orig(rgb, **kw))
    fb = FrameBatch(torch.stack([astro, astro]), torch.stack([astro, astro]), source=astro)
    for m in dlib_metrics.values():
        m.frames(fb)
    assert len(calls) == 2 + 2 + 1   # pred frames, reference frames, source


def test_akd_on_synthfaces_ground_truth_keypoints():
    """AKD on SynthFaces' exact keypoints: 0 for the same motion, the known displacement for a translated one."""
    from datamodules.synthfaces.renderer import neutral_motion, render_clip, sample_identity

    res = 64
    ident = sample_identity(np.random.default_rng(0))
    _, kp_a, _ = render_clip(ident, neutral_motion(2), res)
    _, kp_same, _ = render_clip(ident, neutral_motion(2), res)
    tx = 3.0 / res                                   # translate by 3 px (tx is in image widths)
    _, kp_b, _ = render_clip(ident, neutral_motion(2, tx=tx), res)
    assert np.allclose(keypoint_distance(kp_a, kp_same), 0)
    assert np.allclose(keypoint_distance(kp_a, kp_b), 3.0, atol=1e-3)

    from eval.metrics import AKDGroundTruth

    fb = FrameBatch(torch.zeros(2, 3, res, res), torch.zeros(2, 3, res, res), torch.zeros(3, res, res),
                    keypoints=torch.as_tensor(kp_a), pred_keypoints=torch.as_tensor(kp_b))
    assert np.allclose(AKDGroundTruth().frames(fb), 3.0, atol=1e-3)
