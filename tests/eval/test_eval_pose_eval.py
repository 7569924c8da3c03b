"""pose-evaluation's face metrics (``akd_fan``, ``mkr_fan``, ``aed_openface``) against the reference scripts.

The goldens (tests/golden/pose_eval/, see NOTES.md) are the outputs of pose-evaluation's ``extract.py`` /
``cmp_with_missing.py`` / ``cmp.py`` run unchanged in a scratch folder on the same frames of three real clips, with
the same seeded stand-in weights injected where they load their real ones (no real weights on this machine)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "pose_eval"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import assert_same_frames  # noqa: E402
from pose_eval_frames import all_clip_frames, generated  # noqa: E402


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "reference.npz"), json.loads((GOLDEN / "scores.json").read_text())


@pytest.fixture(scope="module")
def frames(real_fixtures, golden):
    return assert_same_frames(all_clip_frames(real_fixtures / "clips"), golden[1]["frames_sha256"])   # as its PNGs


def test_standin_weights_are_the_goldens():
    """The seeded stand-in weights are the ones injected into the reference (checksum recorded with the goldens)."""
    from eval.pose_eval import standin_seed_digest

    assert standin_seed_digest() == json.loads((GOLDEN / "scores.json").read_text())["standin_crc32"]


def test_openface_embeddings_and_aed_equal_pose_evaluation(frames, golden):
    """OpenFace nn4.small2 embeddings of all 18 frames and ``aed_openface`` (cmp.py's value, through the suite) of
    copy-source and of the reversed clips equal the reference's to 1e-4."""
    from eval.metrics import FrameBatch, nanmean
    from eval.pose_eval import OpenFaceEmbedder
    from eval.protocol import load_protocol
    from eval.suite import build_suite

    ref, scores = golden
    emb = OpenFaceEmbedder(standin=True)
    worst = 0.0
    for name, fr in frames.items():
        ours = emb.embed(fr)
        worst = max(worst, float(np.abs(ours - ref[f"gt/{name}/embedding"][:, 0]).max()))
    print(f"\nopenface embeddings: max |ours - extract.py| = {worst:.2e}")
    assert worst < 1e-4
    proto = load_protocol("fomm_reconstruction", ["metrics=[aed_openface]", "standin_metrics=[aed_openface]"])
    suite = build_suite(proto)
    assert suite.names == ["aed_openface_STANDIN"] and suite.standin
    for kind in ("copy", "rev"):
        vals = []
        for name, fr in frames.items():
            to01 = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
            gen = generated(fr)[kind]
            fb = FrameBatch(pred=to01(gen), target=to01(fr), source=to01(fr[:1])[0], driving=to01(fr))
            vals.append(suite.evaluate(fb)["aed_openface_STANDIN"])
        ours = nanmean(np.concatenate(vals))
        want = scores["scores"][kind]["aed_openface (cmp.py)"]
        print(f"aed_openface_STANDIN {kind}: ours {ours:.8f}  cmp.py {want:.8f}")
        assert ours == pytest.approx(want, abs=1e-6)   # (cmp.py's value is ~4e-3: 1e-6 is 0.03 %)


def test_fan_landmarks_equal_pose_evaluation_on_a_found_and_a_missing_frame(frames, golden):
    """S3FD + FAN (stand-in weights) on two frames of a real clip: one where the reference found a face (landmarks
    equal to 1e-4) and one where it found none (None here too)."""
    from eval.pose_eval import FanLandmarks

    ref = golden[0]["gt/talkinghead1kh_r0c0/landmarks"]
    fan = FanLandmarks(standin=True)
    got = fan.landmarks(frames["talkinghead1kh_r0c0"][2:4])
    assert not np.isnan(ref[2]).any() and np.isnan(ref[3]).all()
    assert got[1] is None and got[0] is not None
    print(f"\nfan landmarks frame 2: max |ours - extract.py| = {np.abs(got[0] - ref[2]).max():.2e} px")
    assert np.abs(got[0] - ref[2]).max() < 1e-4


@pytest.mark.slow
def test_akd_mkr_fan_equal_pose_evaluation_on_three_clips(frames, golden):
    """``akd_fan`` / ``mkr_fan`` through the suite on all 18 frames (copy-source and reversed clips) equal
    cmp_with_missing.py's numbers, and every frame's landmarks equal extract.py's, to 1e-4."""
    from eval.metrics import FrameBatch, nanmean
    from eval.protocol import load_protocol
    from eval.suite import build_suite

    ref, scores = golden
    proto = load_protocol("fomm_reconstruction", ["metrics=[akd_fan,mkr_fan]", "standin_metrics=[akd_fan,mkr_fan]",
                                                  "pred_uint8=round"])
    suite = build_suite(proto)
    fan = suite.frame_metrics[0].analyzer
    worst = 0.0
    for name, fr in frames.items():
        lm = fan.landmarks(fr)
        g = ref[f"gt/{name}/landmarks"]
        assert [x is not None for x in lm] == list(~np.isnan(g[:, 0, 0])), name
        worst = max([worst] + [float(np.abs(a - b).max()) for a, b in zip(lm, g) if a is not None])
    print(f"\nfan landmarks (18 frames): max |ours - extract.py| = {worst:.2e} px")
    assert worst < 1e-4
    for kind in ("copy", "rev"):
        vals = {"akd_fan_STANDIN": [], "mkr_fan_STANDIN": []}
        for name, fr in frames.items():
            to01 = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
            fb = FrameBatch(pred=to01(generated(fr)[kind]), target=to01(fr), source=to01(fr[:1])[0],
                            driving=to01(fr))
            for k, v in suite.evaluate(fb).items():
                vals[k].append(v)
        akd, mkr = (nanmean(np.concatenate(vals[k])) for k in ("akd_fan_STANDIN", "mkr_fan_STANDIN"))
        want = scores["scores"][kind]
        print(f"{kind}: akd {akd:.6f} (ref {want['akd_fan (cmp_with_missing_face.py)']:.6f})  "
              f"mkr {mkr:.4f} (ref {want['mkr_fan (cmp_with_missing_face.py)']:.4f})")
        assert akd == pytest.approx(want["akd_fan (cmp_with_missing_face.py)"], abs=1e-4)
        assert mkr == pytest.approx(want["mkr_fan (cmp_with_missing_face.py)"], abs=1e-4)


def test_missing_real_weights_fail_before_any_work(tmp_path, monkeypatch):
    """Without the stand-in, absent weights are an error naming the file, where to put it and the URL — at suite
    build time (before any frame), and in preflight."""
    from eval.preflight import required_weights
    from eval.protocol import load_protocol
    from eval.suite import build_suite
    from eval.weights import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path / "cache"))
    for var in ("PORTRAITLAB_S3FD", "PORTRAITLAB_FAN2D", "PORTRAITLAB_OPENFACE"):
        monkeypatch.delenv(var, raising=False)
    proto = load_protocol("fomm_reconstruction")
    assert required_weights(proto) == ["s3fd", "fan2d", "openface_nn4small2"]
    assert required_weights(load_protocol("fomm_reconstruction", ["standin_metrics=[akd_fan,aed_openface]"])) == []
    with pytest.raises(MissingWeightsError) as err:
        build_suite(load_protocol("fomm_reconstruction", ["metrics=[akd_fan]"]))
    msg = str(err.value)
    assert "s3fd-619a316812.pth" in msg and str(tmp_path / "torch") in msg
    assert "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth" in msg
    with pytest.raises(MissingWeightsError, match="(?s)openface.pth.*github.com/thnkim/OpenFacePytorch"):
        build_suite(load_protocol("fomm_reconstruction", ["metrics=[aed_openface]"]))


def test_real_weights_load_through_the_registry(tmp_path, monkeypatch):
    """A weight file at ``$PORTRAITLAB_OPENFACE`` is what the backend loads (here: a saved stand-in, so the
    embeddings equal the stand-in's) and the metric is NOT named _STANDIN."""
    from eval.pose_eval import OpenFaceEmbedder, standin_state_dict
    from eval.protocol import load_protocol
    from eval.suite import build_suite

    path = tmp_path / "openface.pth"
    torch.save(standin_state_dict("openface_nn4small2"), path)
    monkeypatch.setenv("PORTRAITLAB_OPENFACE", str(path))
    suite = build_suite(load_protocol("fomm_reconstruction", ["metrics=[aed_openface]"]))
    assert suite.names == ["aed_openface"] and not suite.standin
    x = (np.random.default_rng(0).random((2, 256, 256, 3)) * 255).astype(np.uint8)
    np.testing.assert_allclose(suite.frame_metrics[0].analyzer.embed(x), OpenFaceEmbedder(standin=True).embed(x),
                               atol=1e-6)


def test_pred_uint8_floor_is_what_reconstruction_py_writes():
    """``pred_uint8: floor`` (fomm_reconstruction) quantises generated frames as ``(255 * x).astype(uint8)``."""
    from eval.metrics import FrameBatch

    x = torch.full((1, 3, 4, 4), 0.5)   # 127.5
    fb = FrameBatch(pred=x, target=x, source=x[0])
    assert int(fb.u8("pred", "floor")[0, 0, 0, 0]) == 127 and int(fb.u8("pred")[0, 0, 0, 0]) == 128
    assert int(fb.u8("reference", "floor")[0, 0, 0, 0]) == 128   # real frames: never re-quantised


def test_mrfa_reconstruction_reports_lpips_both_ways():
    """``lpips_vgg`` maps [0, 1] → [-1, 1]; ``lpips_vgg_official`` feeds [0, 1] as MRFA's reconstruction.py
    (``lpips.LPIPS(net='vgg')(driving, out)``, no normalize): the same network, different numbers."""
    from eval.metrics import FrameBatch
    from eval.protocol import load_protocol
    from eval.suite import build_suite

    suite = build_suite(load_protocol("mrfa_reconstruction", ["standin_metrics=[lpips]"]))
    assert suite.names == ["l1", "lpips_vgg_STANDIN", "lpips_vgg_official_STANDIN", "psnr"]
    std, official = suite.frame_metrics[1], suite.frame_metrics[2]
    assert official.model is std.model
    g = torch.Generator().manual_seed(0)
    tgt = torch.rand(3, 3, 64, 64, generator=g)
    pred = (tgt + 0.2 * torch.randn(3, 3, 64, 64, generator=g)).clamp(0, 1)
    vals = suite.evaluate(FrameBatch(pred=pred, target=tgt, source=tgt[0]))
    with torch.no_grad():
        want_off = std.model(tgt, pred).flatten().double().numpy()
        want_std = std.model(tgt * 2 - 1, pred * 2 - 1).flatten().double().numpy()
    np.testing.assert_allclose(vals["lpips_vgg_official_STANDIN"], want_off, rtol=1e-6)
    np.testing.assert_allclose(vals["lpips_vgg_STANDIN"], want_std, rtol=1e-6)
    assert not np.allclose(want_off, want_std, rtol=1e-2)


def test_fomm_reconstruction_end_to_end_scores_frame0_and_labels_standins(tmp_path, fake_data):
    """run_evaluation under fomm_reconstruction (OpenFace part, stand-in): frame 0 is scored (its L1 is 0 for
    copy-source), the metric is named *_STANDIN in metrics.json, ``pred_uint8`` changes the generated frames' uint8
    (round: frame 0's AED is exactly 0), and a bad pred_uint8 fails before any frame."""
    from eval.protocol import load_protocol
    from eval.runner import run_evaluation
    from lit_models.baselines import CopySource
    from lit_models.baselines.config import CopySourceConfig

    proto = load_protocol("fomm_reconstruction", ["metrics=[l1,aed_openface]", "standin_metrics=[aed_openface]",
                                                  "resolution=32"])
    data = fake_data(n=2, T=3, size=32)
    res = run_evaluation(CopySource(CopySourceConfig()), data, proto, tmp_path / "a", progress=False)
    assert res["standin"] and set(res["metrics"]) == {"l1", "aed_openface_STANDIN"}
    assert res["num_frames"] == 6                       # frame 0 included (reconstruction.py scores it)
    import pandas as pd

    per_frame = pd.read_csv(tmp_path / "a" / "per_frame.csv")
    assert (per_frame[per_frame.frame == 0]["l1"] == 0).all()
    # floor-quantised generated frames (as reconstruction.py's PNGs) differ from the rounded reference by < 1/255
    assert (per_frame[per_frame.frame == 0]["aed_openface_STANDIN"] > 0).all()
    rounded = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=32),
                             load_protocol("fomm_reconstruction", ["metrics=[aed_openface]", "pred_uint8=round",
                                                                   "standin_metrics=[aed_openface]", "resolution=32"]),
                             tmp_path / "r", progress=False)
    per_frame_r = pd.read_csv(tmp_path / "r" / "per_frame.csv")
    assert (per_frame_r[per_frame_r.frame == 0]["aed_openface_STANDIN"] == 0).all()
    assert (per_frame_r[per_frame_r.frame > 0]["aed_openface_STANDIN"] > 0).all()
    assert rounded["metrics"]["aed_openface_STANDIN"] != res["metrics"]["aed_openface_STANDIN"]
    with pytest.raises(ValueError, match="pred_uint8"):    # the schema's enum, when the protocol is loaded
        load_protocol("fomm_reconstruction", ["metrics=[aed_openface]", "standin_metrics=[aed_openface]",
                                              "pred_uint8=ceil"])


def test_fan_frames_other_than_256_are_resized_first():
    from eval.pose_eval import FAN_RESOLUTION, _to_fan_frames

    x = (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)
    y = _to_fan_frames(x)
    assert y.shape == (2, FAN_RESOLUTION, FAN_RESOLUTION, 3) and y.dtype == np.uint8
    same = _to_fan_frames(np.zeros((1, 256, 256, 3), np.uint8))
    assert same.shape == (1, 256, 256, 3)


def test_arcface_and_insightface_metrics_share_one_detection_per_frame(monkeypatch):
    """vox_self lists id/aed (arcface) and akd/mkr (insightface): one SCRFD analysis per frame serves all four
    (a fake analyzer counts the calls: pred N + reference N + source 1)."""
    import eval.faces as faces
    from eval.metrics import FrameBatch
    from eval.suite import Suite

    made, calls = [], []

    class Fake:
        def __init__(self, need_embedding=True, need_landmarks=True, pins=None, device="cpu", **kw):
            self.name = "arcface" if need_embedding else "insightface"
            self.need_embedding, self.need_landmarks = need_embedding, need_landmarks
            made.append(self)

        def analyze(self, rgb, need_embedding=True):
            calls.append(1)
            v = float(rgb.mean())
            return faces.FaceResult(np.full((68, 2), v) if self.need_landmarks else None,
                                    np.array([1.0, v / 255]) if self.need_embedding else None)

    monkeypatch.setattr(faces, "InsightFaces", Fake)
    metrics = faces.build_face_metrics(["id_arcface", "aed_arcface", "akd_insightface", "mkr_insightface"], {})
    assert len(made) == 1 and made[0].need_landmarks and made[0].need_embedding
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = Suite(frame_metrics=metrics).evaluate(FrameBatch(pred=x.flip(0), target=x, source=x[0]))
    assert len(calls) == 5 + 5 + 1
    assert set(out) == {"id_arcface", "aed_arcface", "akd_insightface", "mkr_insightface"}
    assert np.isfinite(out["akd_insightface"]).all() and (out["mkr_insightface"] == 0).all()
