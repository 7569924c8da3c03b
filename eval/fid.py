"""FID (Heusel et al. 2017): d² = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½) over Inception-v3 pool features.

torchmetrics' ``FrechetInceptionDistance`` on torch-fidelity's InceptionV3 (TF 2015-12-05 weights, resolved via
``eval.weights``) keeps running sums Σf and Σfᵀf in float64, so memory is flat in the number of frames. The real
(reference) statistics are cacheable per dataset + protocol (``reference_cache_path``), and the whole state is
saved after each video so an interrupted evaluation resumes exactly.

A stand-in extractor (``StandinFeatures``: a seeded random conv net) exists for tests and benchmarks only; a metric
computed with it is named ``fid_STANDIN``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from eval.metrics import STANDIN_SUFFIX, FrameBatch

_STATE_KEYS = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples",
               "fake_features_sum", "fake_features_cov_sum", "fake_features_num_samples")


class StandinFeatures(nn.Module):
    """STAND-IN feature extractor (random, seeded): [0, 1] float N×3×H×W → N×num_features. Not Inception."""

    def __init__(self, num_features: int = 64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_features = num_features
        chans = [3, 16, 32, num_features]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
        self.net = nn.Sequential(*layers).requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        return self.net(x * 2 - 1).mean(dim=(2, 3))


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """The same closed form torchmetrics uses (eigenvalues of Σ1Σ2), exposed for reference statistics."""
    from torchmetrics.image.fid import _compute_fid

    return float(_compute_fid(torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(sigma1, dtype=torch.float64),
                              torch.as_tensor(mu2, dtype=torch.float64), torch.as_tensor(sigma2, dtype=torch.float64)))


def default_cache_dir() -> Path:
    return Path(os.environ.get("PORTRAITLAB_CACHE", Path.home() / ".cache" / "portraitlab")) / "fid_ref"


def reference_cache_path(protocol_hash: str, dataset_key: str, backend: str, cache_dir=None) -> Path:
    key = hashlib.sha256(f"{protocol_hash}|{dataset_key}|{backend}".encode()).hexdigest()[:24]
    return Path(cache_dir or default_cache_dir()) / f"{backend}_{key}.pt"


class FID:
    """Dataset-level FID with running statistics. ``update(fb)`` adds generated frames (and reference frames unless
    the reference statistics were loaded from the cache); ``compute()`` returns the distance."""

    def __init__(self, backend: str = "inception_v3_2015_12_05", num_samples: int = 0, standin: bool = False,
                 device="cpu", weights_sha256: Optional[str] = None):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.backend, self.num_samples, self.standin = backend, int(num_samples), standin
        self.name = "fid" + (STANDIN_SUFFIX if standin else "")
        if standin:
            self.metric = FrechetInceptionDistance(feature=StandinFeatures(), reset_real_features=False,
                                                   normalize=True, sync_on_compute=False)
        else:
            if backend != "inception_v3_2015_12_05":
                raise ValueError(f"unknown fid_backend {backend!r} (inception_v3_2015_12_05, or list `fid` in "
                                 "`standin_metrics` for the labelled stand-in)")
            from eval.weights import resolve

            path = resolve(backend, expected_sha256=weights_sha256)
            self.metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path),
                                                   reset_real_features=False, normalize=True, sync_on_compute=False)
        self.device = torch.device(device)
        self.metric.to(self.device)
        self.reference_loaded = False

    def to(self, device):
        self.device = torch.device(device)
        self.metric.to(self.device)
        return self

    def _take(self, frames: torch.Tensor, have: int) -> torch.Tensor:
        if self.num_samples <= 0:
            return frames
        return frames[: max(0, self.num_samples - have)]

    @torch.no_grad()
    def update_frames(self, frames: torch.Tensor, real: bool, chunk: int = 32) -> None:
        have = int(getattr(self.metric, "real_features_num_samples" if real else "fake_features_num_samples"))
        frames = self._take(frames, have)
        for i in range(0, frames.shape[0], chunk):
            self.metric.update(frames[i:i + chunk].to(self.device), real=real)

    def update(self, fb: FrameBatch) -> None:
        self.update_frames(fb.pred, real=False)
        if not self.reference_loaded:
            self.update_frames(fb.reference, real=True)

    def compute(self) -> float:
        return float(self.metric.compute())

    # ---- persistence (resume, reference cache) -------------------------------------------------------------
    def state_dict(self) -> dict:
        return {k: getattr(self.metric, k).detach().cpu().clone() for k in _STATE_KEYS} | {
            "reference_loaded": self.reference_loaded}

    def load_state_dict(self, state: dict) -> None:
        for k in _STATE_KEYS:
            setattr(self.metric, k, state[k].to(self.device))
        self.reference_loaded = bool(state.get("reference_loaded", False))

    def merge_state(self, state: dict) -> None:
        """Add another shard's running statistics (a ``state_dict()``; DDP ranks) with torchmetrics' own reduction of
        the metric's states (``Metric.merge_state``: the sums and counts add). ``compute`` never syncs by itself
        (``sync_on_compute=False``): the evaluation merges the ranks' states once, on the rank that computes."""
        self.metric.merge_state({k: state[k].to(self.device) for k in _STATE_KEYS})

    def save_reference(self, path) -> Path:
        path = Path(path)   # written to a temporary file in the same folder, then renamed (atomic)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({k: getattr(self.metric, k).detach().cpu() for k in _STATE_KEYS[:3]} | {
            "backend": self.backend, "num_samples": self.num_samples}, tmp)
        os.replace(tmp, path)
        return path

    def load_reference(self, path) -> bool:
        path = Path(path)
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        for k in _STATE_KEYS[:3]:
            setattr(self.metric, k, state[k].to(self.device))
        self.reference_loaded = True
        return True
