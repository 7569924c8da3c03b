"""insightface backends on the evaluation device: onnxruntime providers from ``device`` (CUDA → CUDAExecutionProvider,
else CPU; CUDA without the provider → an error naming onnxruntime-gpu), recorded in the suite facts; one analysis per
frame shared by every face metric; the named ArcFace model (``arcface_model``) in metric names, the protocol hash and
the weights it resolves; the 3DMM metrics fail before work. CPU only: onnxruntime / insightface are replaced by
recording fakes (the real ONNX files are not needed for the wiring)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def fake_ort(monkeypatch):
    """``onnxruntime.get_available_providers`` answering what the test sets in ``state["available"]``."""
    import onnxruntime

    state = {"available": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(state["available"]))
    return state


class _Session:
    def __init__(self, providers):
        self._providers = list(providers)

    def get_providers(self):
        return list(self._providers)


class _FakeDetector:
    """SCRFD + 1k3d68 stand-in: a face in every frame whose mean is above 0.1, counting each call."""

    def __init__(self, calls: Counter, providers):
        self.calls, self.providers = calls, list(providers)
        self._det = type("M", (), {"session": _Session(providers)})()
        self._lmk = type("M", (), {"session": _Session(providers)})()

    def detect(self, rgb):
        from datamodules.face import FaceBox

        self.calls["detect"] += 1
        return [FaceBox(8.0, 8.0, 56.0, 56.0, 0.9)] if rgb.mean() > 25 else []

    def landmarks68(self, rgb, box):
        self.calls["landmarks68"] += 1
        k = np.linspace(10, 50, 68, dtype=np.float32)
        return np.stack([k, k[::-1]], 1) + float(rgb.mean()) / 255

    def landmarks5(self, rgb, box):
        self.calls["landmarks5"] += 1
        return np.array([[24, 26], [40, 26], [32, 34], [26, 44], [38, 44]], np.float32)


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """Replace weight resolution, the insightface detector and ``model_zoo.get_model`` by recorders."""
    import insightface

    import datamodules.face
    import eval.weights

    log = {"calls": Counter(), "resolved": [], "detector_providers": [], "model_providers": [], "ctx": []}

    def resolve(name, expected_sha256=None, verify=False):
        log["resolved"].append(name)
        p = tmp_path / eval.weights.REGISTRY[name].filename
        p.write_bytes(b"x")
        return p

    def get_face_detector(backend="dlib", **kw):
        assert backend == "insightface"
        log["detector_providers"].append(list(kw["providers"]))
        return _FakeDetector(log["calls"], kw["providers"])

    class _Recognizer:
        def __init__(self, path, providers):
            self.path, self.session = path, _Session(providers)

        def prepare(self, ctx_id=0, **kw):
            log["ctx"].append(ctx_id)

        def get_feat(self, aligned):
            log["calls"]["get_feat"] += 1
            assert aligned.shape == (112, 112, 3)
            return np.array([[aligned.mean() + 1.0, 1.0, 0.5]], np.float32)

    def get_model(path, providers=None, **kw):
        log["model_providers"].append((Path(path).name, list(providers)))
        return _Recognizer(path, providers)

    monkeypatch.setattr(eval.weights, "resolve", resolve)
    monkeypatch.setattr(datamodules.face, "get_face_detector", get_face_detector)
    monkeypatch.setattr(insightface.model_zoo, "get_model", get_model)
    return log


def _protocol(**kw):
    base = {"name": "t", "metrics": ["id", "aed", "akd", "mkr"], "id_backend": "arcface",
            "landmark_backend": "insightface", "resolution": 64}
    base.update(kw)
    return OmegaConf.create(base)


def test_onnx_providers_follow_the_device(fake_ort):
    from eval.faces import onnx_providers

    assert onnx_providers("cuda") == CUDA
    assert onnx_providers("cuda:1") == CUDA
    assert onnx_providers(torch.device("cuda", 0)) == CUDA
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    fake_ort["available"] = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        onnx_providers("cuda")


@pytest.mark.parametrize("device,expected,ctx", [("cuda", CUDA, 0), ("cpu", ["CPUExecutionProvider"], -1)])
def test_build_suite_requests_the_device_providers_and_records_them(fake_ort, fakes, device, expected, ctx):
    from eval.suite import build_suite

    suite = build_suite(_protocol(), device=device)
    assert sorted(suite.names) == ["aed_arcface", "akd_insightface", "id_arcface", "mkr_insightface"]
    assert fakes["detector_providers"] == [expected]          # one detector for both backends
    assert fakes["model_providers"] == [("w600k_r50.onnx", expected)]
    assert fakes["ctx"] == [ctx]
    facts = suite.facts["onnx_providers"]["arcface"]
    assert facts["providers_requested"] == expected and facts["device"] == device
    assert facts["sessions"]["w600k_r50.onnx"] == expected
    assert facts["arcface_model"] == "w600k_r50"


def test_cuda_without_the_provider_fails_before_any_model_loads(fake_ort, fakes):
    from eval.suite import build_suite

    fake_ort["available"] = ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        build_suite(_protocol(), device="cuda")
    assert fakes["model_providers"] == [] and fakes["detector_providers"] == [] and fakes["resolved"] == []


def test_each_frame_analysed_once_for_every_face_metric(fake_ort, fakes):
    from eval.metrics import FrameBatch
    from eval.suite import build_suite

    suite = build_suite(_protocol(metrics=["id", "aed", "akd", "mkr", "id_to_driver", "id_leakage",
                                           "id_leakage_missing"]), device="cpu")
    g = torch.Generator().manual_seed(0)
    n = 3
    target = 0.3 + 0.4 * torch.rand(n, 3, 64, 64, generator=g)
    pred = 0.3 + 0.4 * torch.rand(n, 3, 64, 64, generator=g)
    pred[1] = 0.02                                              # no face found in pred frame 1
    fb = FrameBatch(pred, target, target[0], driving=target)
    out = suite.evaluate(fb)
    analysed = n + n + 1                                        # pred, reference (= driving), source
    assert fakes["calls"]["detect"] == analysed
    found = analysed - 1
    assert fakes["calls"]["landmarks68"] == found
    assert fakes["calls"]["get_feat"] == found
    assert fakes["calls"]["landmarks5"] == found
    assert np.isnan(out["id_arcface"][1]) and out["mkr_insightface"].tolist() == [0.0, 1.0, 0.0]
    assert np.isfinite(out["akd_insightface"][[0, 2]]).all()
    # the detector's sessions are recorded once they are used
    assert suite.facts["onnx_providers"]["arcface"]["sessions"]["det_10g.onnx"] == ["CPUExecutionProvider"]


def test_arcface_model_names_the_metric_the_weights_and_the_hash(fake_ort, fakes):
    from eval.protocol import load_protocol, protocol_hash
    from eval.suite import build_suite

    suite = build_suite(_protocol(metrics=["id", "aed_arcface", "id_leakage"], arcface_model="glintr100"),
                        device="cpu")
    assert sorted(suite.names) == ["aed_arcface_glintr100", "id_arcface_glintr100", "id_leakage_arcface_glintr100"]
    assert fakes["model_providers"] == [("glintr100.onnx", ["CPUExecutionProvider"])]
    assert "arcface_glintr100" in fakes["resolved"] and "arcface_w600k_r50" not in fakes["resolved"]
    with pytest.raises(ValueError, match="arcface_model='r18'"):
        build_suite(_protocol(arcface_model="r18"), device="cpu")

    p = load_protocol("xnemo_cross")
    q = load_protocol("xnemo_cross", ["arcface_model=glintr100"])
    r = load_protocol("xnemo_cross", ["arcface_model=w600k_r50"])
    assert protocol_hash(p) != protocol_hash(q)
    assert protocol_hash(p) == protocol_hash(r)       # the default: hashes of earlier w600k_r50 results stay valid


def test_glintr100_registered_and_absent_weights_fail_before_work(monkeypatch, tmp_path):
    from eval.preflight import required_weights
    from eval.suite import build_suite
    from eval.weights import REGISTRY, MissingWeightsError, integrity

    w = REGISTRY["arcface_glintr100"]
    assert w.filename == "glintr100.onnx" and w.archive_member == "glintr100.onnx"
    assert w.url.endswith("antelopev2.zip") and "non-commercial" in w.licence and integrity(w) == "recorded"
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    for n in ("scrfd_det_10g", "arcface_glintr100", "arcface_w600k_r50", "insightface_1k3d68"):
        monkeypatch.delenv(REGISTRY[n].env, raising=False)
    proto = _protocol(metrics=["id"], arcface_model="glintr100")
    assert required_weights(proto) == ["scrfd_det_10g", "arcface_glintr100"]
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    (tmp_path / "models" / "buffalo_l" / "det_10g.onnx").write_bytes(b"x")
    with pytest.raises(MissingWeightsError, match=r"glintr100\.onnx.*\n.*antelopev2"):
        build_suite(proto, device="cpu")


def test_run_evaluation_records_the_providers_in_metrics_json(fake_ort, fakes, tmp_path, fake_data):
    import json

    from eval.protocol import load_protocol
    from eval.runner import run_evaluation
    from lit_models.baselines import CopySource
    from lit_models.baselines.config import CopySourceConfig

    proto = load_protocol("synthfaces_self", ["resolution=64", "num_frames=3", "batch_size=2",
                                              "metrics=[l1,id,akd]", "id_backend=arcface",
                                              "landmark_backend=insightface"])
    run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=64), proto, tmp_path, progress=False,
                   device="cpu")
    facts = json.loads((tmp_path / "metrics.json").read_text())["onnx_providers"]["arcface"]
    assert facts["device"] == "cpu" and facts["providers_requested"] == ["CPUExecutionProvider"]
    assert facts["sessions"]["w600k_r50.onnx"] == ["CPUExecutionProvider"]
    assert facts["sessions"]["det_10g.onnx"] == ["CPUExecutionProvider"]
