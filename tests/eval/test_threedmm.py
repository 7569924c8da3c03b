"""Deep3DFaceRecon 3DMM metrics (``aed_3dmm_deep3d``, ``apd_3dmm_deep3d``, ``pose_deg_deep3d``) against the official
code.

The golden (tests/golden/deep3d/, see NOTES.md) is the output of Deep3DFaceRecon_pytorch's own ``test.py``
``read_data`` / ``align_img`` / ``ReconNetWrapper`` run unchanged in a scratch folder on frames of three real clips,
with the 5 points our MTCNN finds and the same seeded stand-in regressor weights (the released ``epoch_20.pth`` is
not on this machine; MTCNN's weights are the real ones, inside the facenet-pytorch wheel)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "deep3d"
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "datamodules")]
from helpers import assert_same_frames  # noqa: E402
from threedmm_frames import golden_frames  # noqa: E402

needs_facenet = pytest.mark.skipif(
    importlib.util.find_spec("facenet_pytorch") is None,
    reason="needs facenet-pytorch (MTCNN): pip install --no-deps facenet-pytorch==2.6.0")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "reference.npz")), json.loads((GOLDEN / "meta.json").read_text())


@pytest.fixture(scope="module")
def frames(real_fixtures, golden):
    return assert_same_frames(golden_frames(real_fixtures / "clips"), golden[1]["frames_sha256"])   # as its PNGs


@pytest.fixture(scope="module")
def analyzer():
    from eval.threedmm import Deep3DAnalyzer

    return Deep3DAnalyzer(standin=True)


def _to01(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255


def test_standin_weights_are_the_goldens():
    """The seeded stand-in regressor weights are the ones loaded into the official ReconNetWrapper."""
    from eval.threedmm import standin_digest

    assert standin_digest() == json.loads((GOLDEN / "meta.json").read_text())["standin_crc32"]


def test_lm3d_std_is_the_official_load_lm3d(golden):
    from eval.threedmm import LM3D_STD

    assert np.array_equal(LM3D_STD, golden[0]["lm3d_std"])


@needs_facenet
def test_landmarks_alignment_and_coefficients_equal_the_official_code(frames, golden, analyzer):
    """On 6 frames of 3 real clips: MTCNN finds the 5 points fed to the reference (and no face where it found none),
    the alignment's scale / translation and 224² crops equal ``align_img``'s (crops bit-exact), and the 257
    coefficients equal ``ReconNetWrapper``'s to 1e-4."""
    from golden_images import assert_matches

    ref, meta = golden
    names = [str(n) for n in ref["names"]]
    got: dict[str, tuple] = {}
    for clip, fr in frames.items():
        lms, crops, params, found = analyzer.inputs(fr)
        for t, lm in enumerate(lms):
            key = f"{clip}_{t}"
            if key in meta["no_face"]:
                assert lm is None, key
                continue
            assert lm is not None, key
            assert np.abs(lm - np.asarray(meta["landmarks"][key])).max() < 1e-3, key
        coeffs = analyzer.regress(crops)
        for k, i in enumerate(found):
            got[f"{clip}_{i}"] = (params[k], crops[k], coeffs[k])
    assert sorted(got) == sorted(names)
    params = np.stack([got[n][0] for n in names])
    np.testing.assert_allclose(params, ref["trans_params"], rtol=1e-9, atol=1e-9)
    assert_matches("crops", np.stack([got[n][1] for n in names]), ref, tol=0, exact=True)
    coeffs = np.stack([got[n][2] for n in names])
    worst = float(np.abs(coeffs - ref["coeffs"].astype(np.float64)).max())
    print(f"\nDeep3DFaceRecon coefficients (stand-in weights), {len(names)} frames: max |ours - official| = "
          f"{worst:.2e} (|coeff| mean {np.abs(ref['coeffs']).mean():.3f})")
    assert worst < 1e-4


@needs_facenet
def test_metrics_through_the_suite(frames, golden):
    """The three metrics from ``build_suite``: identical clips give 0 on every frame with a face, NaN (counted)
    where MTCNN finds none; a perturbed clip (frames swapped within each clip) gives the value of the formula on
    the official coefficients, > 0."""
    from eval.metrics import FrameBatch
    from eval.suite import build_suite
    from eval.threedmm import COEFF_SLICES

    ref, meta = golden
    coeff = {str(n): ref["coeffs"][i].astype(np.float64) for i, n in enumerate(ref["names"])}
    proto = OmegaConf.create({"name": "t", "metrics": ["aed_3dmm_deep3d", "apd_3dmm_deep3d", "pose_deg_deep3d"],
                              "standin_metrics": ["deep3d"], "resolution": 256})
    suite = build_suite(proto)
    names = ["aed_3dmm_deep3d_STANDIN", "apd_3dmm_deep3d_STANDIN", "pose_deg_deep3d_STANDIN"]
    assert suite.names == names and suite.standin
    assert len({id(m.analyzer) for m in suite.frame_metrics}) == 1      # one regression per frame for all three
    pose = np.r_[COEFF_SLICES["angle"], COEFF_SLICES["trans"]]
    for clip, fr in frames.items():
        same = suite.evaluate(FrameBatch(pred=_to01(fr), target=_to01(fr), source=_to01(fr[:1])[0]))
        swapped = suite.evaluate(FrameBatch(pred=_to01(fr[::-1]), target=_to01(fr), source=_to01(fr[:1])[0]))
        keys = [f"{clip}_{t}" for t in range(len(fr))]
        for t, k in enumerate(keys):
            if k in meta["no_face"]:
                assert all(np.isnan(same[n][t]) and np.isnan(swapped[n][t]) for n in names)
                continue
            assert all(same[n][t] == 0 for n in names)
            other = keys[len(keys) - 1 - t]
            if other in meta["no_face"]:
                assert all(np.isnan(swapped[n][t]) for n in names)
                continue
            p, r = coeff[other], coeff[k]
            want = {"aed_3dmm_deep3d_STANDIN": np.abs(p[80:144] - r[80:144]).mean(),
                    "apd_3dmm_deep3d_STANDIN": np.abs(p[pose] - r[pose]).mean(),
                    "pose_deg_deep3d_STANDIN": np.degrees(np.abs(p[224:227] - r[224:227])).mean()}
            for n in names:
                assert swapped[n][t] > 0
                tol = 1e-4 * (180 / np.pi if n.startswith("pose_deg") else 1)   # coefficients to 1e-4
                assert swapped[n][t] == pytest.approx(want[n], abs=tol), (clip, t, n)
    facts = suite.frame_metrics[0].facts
    assert facts["frames"] == 2 * 6 and facts["no_face_reference"] == 2 * len(meta["no_face"])
    assert facts["no_face_pred"] == 2 * len(meta["no_face"]) and facts["landmarks5"] == "mtcnn_facenet_pytorch"
    assert suite.facts["threedmm"][names[0]] is facts        # metrics.json carries the counts


def test_released_weights_are_required_before_work(monkeypatch, tmp_path):
    """Without ``epoch_20.pth`` (and no stand-in named), building the metric fails naming the file, where to put it
    and the URL; pre-flight lists the regressor (not with the stand-in) and MTCNN, not the BFM (rendering only)."""
    from eval.preflight import check_protocol, required_weights
    from eval.suite import build_suite
    from eval.weights import REGISTRY, MissingWeightsError

    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path))
    monkeypatch.delenv(REGISTRY["deep3dfacerecon_epoch20"].env, raising=False)
    proto = OmegaConf.create({"name": "t", "metrics": ["aed_3dmm_deep3d", "pose_deg_deep3d"], "resolution": 64})
    assert required_weights(proto) == ["deep3dfacerecon_epoch20", "mtcnn_facenet_pytorch"]
    assert required_weights(OmegaConf.merge(proto, {"standin_metrics": ["deep3d"]})) == ["mtcnn_facenet_pytorch"]
    assert check_protocol(proto)[0] == []
    with pytest.raises(MissingWeightsError, match=r"epoch_20\.pth.*\n.*drive\.google\.com"):
        build_suite(proto, device="cpu")
    bad = tmp_path / "epoch_20.pth"
    torch.save({"net": {}}, bad)
    monkeypatch.setenv(REGISTRY["deep3dfacerecon_epoch20"].env, str(bad))
    with pytest.raises(ValueError, match="net_recon"):
        build_suite(proto, device="cpu")


@needs_facenet
def test_a_released_checkpoint_file_loads_as_the_official_layout(monkeypatch, tmp_path, frames, golden):
    """A file with the released layout (``{'net_recon': state_dict}``) at the registry's path is loaded by the
    real-weights path: metric names without ``_STANDIN``; here it holds the stand-in tensors, so the coefficients
    are the golden's."""
    from eval.metrics import FrameBatch
    from eval.suite import build_suite
    from eval.threedmm import standin_state_dict
    from eval.weights import REGISTRY

    path = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": standin_state_dict()}, path)
    monkeypatch.setenv(REGISTRY["deep3dfacerecon_epoch20"].env, str(path))
    suite = build_suite(OmegaConf.create({"name": "t", "metrics": ["aed_3dmm_deep3d"], "resolution": 256}))
    assert suite.names == ["aed_3dmm_deep3d"] and not suite.standin
    fr = frames["talkinghead1kh_r0c0"]
    fb = FrameBatch(pred=_to01(fr[::-1]), target=_to01(fr), source=_to01(fr[:1])[0])
    c = {str(n): golden[0]["coeffs"][i].astype(np.float64) for i, n in enumerate(golden[0]["names"])}
    want = np.abs(c["talkinghead1kh_r0c0_1"][80:144] - c["talkinghead1kh_r0c0_0"][80:144]).mean()
    assert suite.evaluate(fb)["aed_3dmm_deep3d"][0] == pytest.approx(want, abs=1e-4)


def test_unknown_metric_and_bad_rounding_are_refused():
    from eval.threedmm import ThreeDMMMetric, build_threedmm_metric

    with pytest.raises(ValueError, match="unknown 3DMM metric"):
        build_threedmm_metric("exp_3dmm_deep3d", OmegaConf.create({"standin_metrics": ["deep3d"]}))
    with pytest.raises(ValueError, match="pred_uint8"):
        ThreeDMMMetric("aed_3dmm_deep3d", analyzer=type("A", (), {"standin": True})(), pred_uint8="ceil")
