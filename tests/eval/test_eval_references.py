"""Every metric against its reference implementation on identical inputs.

Pretrained Inception / AlexNet weights cannot be downloaded here, so LPIPS and FID are checked on STAND-IN
networks (random weights, the same in our code and in the reference) — these tests check *our code*, not the
numbers of the real networks.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from eval.metrics import L1, PSNR, SSIM, FrameBatch, keypoint_distance


@pytest.fixture(scope="module")
def frames():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 3, 48, 40, generator=g)
    noisy = (base + 0.1 * torch.randn(base.shape, generator=g)).clamp(0, 1)
    return noisy, base


def test_ssim_matches_skimage(frames):
    from skimage.metrics import structural_similarity

    pred, target = frames
    ours = SSIM().frames(FrameBatch(pred, target, target[0]))
    for i in range(pred.shape[0]):
        ref = structural_similarity(pred[i].permute(1, 2, 0).double().numpy(), target[i].permute(1, 2, 0).double().numpy(),
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
                                    channel_axis=-1)
        assert abs(ours[i] - ref) < 1e-4, (i, ours[i], ref)
    assert 0.1 < ours.mean() < 0.99   # not a degenerate input


def test_psnr_and_l1_exact(frames):
    from skimage.metrics import peak_signal_noise_ratio

    pred, target = frames
    fb = FrameBatch(pred, target, target[0])
    psnr, l1 = PSNR().frames(fb), L1().frames(fb)
    for i in range(pred.shape[0]):
        p, t = pred[i].double().numpy(), target[i].double().numpy()
        assert psnr[i] == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1.0), rel=1e-12)
        assert l1[i] == pytest.approx(np.abs(p - t).mean(), rel=1e-12)


def _meta_alexnet_state():
    import torchvision

    with torch.device("meta"):   # shapes only, no initialisation
        return torchvision.models.alexnet(weights=None).state_dict()


@pytest.fixture(scope="module")
def standin_alexnet_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a STAND-IN (random) AlexNet under torchvision's file name, so the official
    ``lpips.LPIPS(net='alex')`` and our wrapper both load exactly these weights through their own loading paths."""

    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    # random conv trunk; the classifier (unused by LPIPS, 58M of the 61M parameters) as a stride-0 zero tensor
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 if k.startswith("features.") else torch.zeros(1).expand(v.shape)
          for k, v in _meta_alexnet_state().items()}
    torch.save(sd, ckpt / "alexnet-owt-7be5be79.pth")
    return home


def test_lpips_wrapper_matches_official_lpips(standin_alexnet_home, monkeypatch):
    import warnings

    import lpips

    from eval.metrics import LPIPS

    monkeypatch.setenv("TORCH_HOME", str(standin_alexnet_home))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net="alex", verbose=False).eval()
    ours = LPIPS("alex")
    assert ours.name == "lpips_alex"
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(5, 3, 64, 64, generator=g), torch.rand(5, 3, 64, 64, generator=g)
    with torch.no_grad():
        want = ref(a * 2 - 1, b * 2 - 1).flatten().double()
    got = torch.as_tensor(ours.frames(FrameBatch(a, b, b[0])))
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got, want)
    assert got.std() > 0 and (ours(b, b).abs() < 1e-6).all()


def test_lpips_missing_trunk_names_file_and_url(tmp_path, monkeypatch):
    from eval.metrics import LPIPS
    from eval.weights import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("PORTRAITLAB_ALEXNET", raising=False)
    with pytest.raises(MissingWeightsError, match=r"alexnet-owt-7be5be79\.pth.*\n.*PORTRAITLAB_ALEXNET.*\n.*https://download"):
        LPIPS("alex")


# ---- FID ---------------------------------------------------------------------------------------------------------
def _scipy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture(scope="module")
def fid_images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(160, 3, 16, 16, generator=g), torch.rand(160, 3, 16, 16, generator=g) ** 1.5


def _fid(real, fake, chunk=40):
    from eval.fid import FID

    m = FID(standin=True)
    for i in range(0, real.shape[0], chunk):   # streamed in chunks: running statistics
        m.update_frames(real[i:i + chunk], real=True)
        m.update_frames(fake[i:i + chunk], real=False)
    return m


def test_fid_matches_scipy_sqrtm_reference(fid_images):
    from eval.fid import StandinFeatures

    real, fake = fid_images
    m = _fid(real, fake)
    assert m.name == "fid_STANDIN"
    with torch.no_grad():
        f = StandinFeatures()
        fr, ff = f(real).double().numpy(), f(fake).double().numpy()
    want = _scipy_fid(fr, ff)
    assert want > 1e-3
    assert m.compute() == pytest.approx(want, rel=1e-3)


def test_fid_self_zero_and_monotone_in_shift(fid_images):
    real, _ = fid_images
    assert abs(_fid(real, real.clone()).compute()) < 1e-4
    values = [_fid(real, (real + s).clamp(0, 1)).compute() for s in (0.02, 0.08, 0.2)]
    assert values[0] < values[1] < values[2], values


def test_fid_state_flat_in_frames():
    from eval.fid import FID

    m = FID(standin=True)
    m.update_frames(torch.rand(8, 3, 16, 16), real=True)
    sizes = {k: v.numel() for k, v in m.state_dict().items() if torch.is_tensor(v)}
    m.update_frames(torch.rand(200, 3, 16, 16), real=True)
    assert {k: v.numel() for k, v in m.state_dict().items() if torch.is_tensor(v)} == sizes


def test_fid_num_samples_caps_frames():
    from eval.fid import FID

    m = FID(standin=True, num_samples=10)
    for _ in range(3):
        m.update_frames(torch.rand(4, 3, 16, 16), real=False)
    assert int(m.metric.fake_features_num_samples) == 10


def test_fid_real_weights_missing_is_an_error(tmp_path, monkeypatch):
    from eval.fid import FID
    from eval.weights import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("PORTRAITLAB_INCEPTION", raising=False)
    with pytest.raises(MissingWeightsError, match="weights-inception-2015-12-05-6726825d.pth"):
        FID()


def test_fid_reference_cache_reused(tmp_path, monkeypatch, fake_data):
    from eval.protocol import load_protocol
    from eval.runner import run_evaluation
    from lit_models.baselines import CopySource
    from lit_models.baselines.config import CopySourceConfig

    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path / "cache"))
    proto = load_protocol("synthfaces_self", ["resolution=16", "num_frames=4", "metrics=[l1,fid]", "standin_metrics=[fid]"])
    model = CopySource(CopySourceConfig())
    a = run_evaluation(model, fake_data(n=3, T=4, size=16), proto, tmp_path / "a", progress=False, dataset_key="fake")
    cached = list((tmp_path / "cache" / "fid_ref").glob("*.pt"))
    assert len(cached) == 1
    b = run_evaluation(model, fake_data(n=3, T=4, size=16), proto, tmp_path / "b", progress=False, dataset_key="fake")
    assert b["metrics"]["fid_STANDIN"] == pytest.approx(a["metrics"]["fid_STANDIN"], rel=1e-9)
    # the cache is keyed by the data: another dataset key computes (and caches) its own reference
    run_evaluation(model, fake_data(n=3, T=4, size=16), proto, tmp_path / "c", progress=False, dataset_key="other")
    assert len(list((tmp_path / "cache" / "fid_ref").glob("*.pt"))) == 2


# ---- keypoints ---------------------------------------------------------------------------------------------------
def test_keypoint_distance_known_displacement():
    g = np.random.default_rng(0)
    kp = g.uniform(0, 64, size=(5, 10, 2))
    assert np.allclose(keypoint_distance(kp, kp), 0)
    assert np.allclose(keypoint_distance(kp, kp + np.array([3.0, 4.0])), 5.0)
