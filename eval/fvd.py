"""FVD (Unterthiner et al. 2018): d² = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½) over I3D features of clips.

The standard clip protocol (StyleGAN-V, Skorokhodov et al. 2022, the common PyTorch port of the TF original): clips
of 16 consecutive frames, fed to the Kinetics-400 I3D torchscript (``i3d_torchscript.pt``, registered in
``eval.weights``) as B×3×T×H×W in [0, 255] with ``rescale=True, resize=True, return_features=True`` (the detector
scales to [−1, 1] and resizes to 224² itself; 400-d features before the softmax). Statistics with the unbiased
covariance (``np.cov``), running float64 sums so memory is flat in the number of clips.

Per video, the scored frames (self mode: frames 1..T−1; the source frame is not generated) are cut into
non-overlapping clips of ``fvd_clip_len`` frames (the protocol's; 16 is the standard); a video shorter than one
clip, or with unscored (non-finite) frames inside, contributes no clip — ``facts`` counts them. The reference clips
are the same windows of the target (else driving) frames.

A stand-in extractor (``StandinI3D``: a seeded random 3-D conv net) exists for tests only; the metric is then named
``fvd_STANDIN`` and ``metrics.json`` says ``"standin": true``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from eval.metrics import STANDIN_SUFFIX, FrameBatch

I3D_KWARGS = dict(rescale=True, resize=True, return_features=True)


class StandinI3D(nn.Module):
    """STAND-IN video feature extractor (random, seeded): B×3×T×H×W in [0, 255] → B×num_features. Not I3D."""

    def __init__(self, num_features: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, 8, 16, num_features]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            conv = nn.Conv3d(cin, cout, 3, stride=(1, 2, 2), padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (cin * 27)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
        self.net = nn.Sequential(*layers).requires_grad_(False).eval()
        self.num_features = num_features

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = True):
        x = x / 127.5 - 1 if rescale else x
        return self.net(x).mean(dim=(2, 3, 4))


def _stats(s: torch.Tensor, ss: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    mu = s / n
    sigma = (ss - n * torch.outer(mu, mu)) / (n - 1)
    return mu, sigma


class FVD:
    """Dataset-level FVD with running feature sums; ``update(fb)`` adds a video's generated and reference clips."""

    def __init__(self, backend: str = "i3d_torchscript", clip_len: int = 16, standin: bool = False, device="cpu",
                 weights_sha256: Optional[str] = None, chunk: int = 8):
        if clip_len < 2:
            raise ValueError(f"eval_protocol.fvd_clip_len={clip_len} must be >= 2 (a clip has motion)")
        self.backend, self.clip_len, self.standin, self.chunk = backend, int(clip_len), standin, chunk
        self.name = "fvd" + (STANDIN_SUFFIX if standin else "")
        if standin:
            self.detector = StandinI3D()
        else:
            if backend != "i3d_torchscript":
                raise ValueError(f"unknown fvd_backend {backend!r} (i3d_torchscript, or list `fvd` in "
                                 "`standin_metrics` for the labelled stand-in)")
            from eval.weights import resolve

            path = resolve(backend, expected_sha256=weights_sha256)
            self.detector = torch.jit.load(str(path), map_location="cpu").eval()
        self.device = torch.device(device)
        self.detector.to(self.device)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Optional[torch.Tensor]] = {"real": None, "fake": None}
        self.outer: dict[str, Optional[torch.Tensor]] = {"real": None, "fake": None}
        self.count = {"real": 0, "fake": 0}
        self.videos_without_clip = 0
        self.reference_loaded = False

    def to(self, device):
        self.device = torch.device(device)
        self.detector.to(self.device)
        return self

    def clips(self, frames: torch.Tensor) -> torch.Tensor:
        """N×3×H×W in [0, 1] → K×3×L×H×W in [0, 255]: the non-overlapping clips of ``clip_len`` frames."""
        k = frames.shape[0] // self.clip_len
        x = frames[: k * self.clip_len].reshape(k, self.clip_len, *frames.shape[1:])
        return x.permute(0, 2, 1, 3, 4).float() * 255

    @torch.no_grad()
    def features(self, clips: torch.Tensor) -> torch.Tensor:
        out = [self.detector(clips[i:i + self.chunk].to(self.device), **I3D_KWARGS)
               for i in range(0, clips.shape[0], self.chunk)]
        return torch.cat(out).double().cpu()

    def add_features(self, feats: torch.Tensor, which: str) -> None:
        feats = feats.double()
        if self.sums[which] is None:
            d = feats.shape[1]
            self.sums[which], self.outer[which] = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
        self.sums[which] += feats.sum(0)
        self.outer[which] += feats.T @ feats
        self.count[which] += feats.shape[0]

    def update(self, fb: FrameBatch) -> None:
        idx = fb.frame_index
        gaps = idx is not None and len(idx) > 1 and any(b - a != 1 for a, b in zip(idx[:-1], idx[1:]))
        if len(fb) < self.clip_len or gaps:
            self.videos_without_clip += 1
            return
        self.add_features(self.features(self.clips(fb.pred)), "fake")
        if not self.reference_loaded:
            self.add_features(self.features(self.clips(fb.reference)), "real")

    def compute(self) -> float:
        if min(self.count.values()) < 2:
            return math.nan     # fewer than 2 clips: no covariance (written as null, listed as undefined)
        from eval.fid import frechet_distance_from_stats

        mu_r, s_r = _stats(self.sums["real"], self.outer["real"], self.count["real"])
        mu_g, s_g = _stats(self.sums["fake"], self.outer["fake"], self.count["fake"])
        return frechet_distance_from_stats(mu_r, s_r, mu_g, s_g)

    @property
    def facts(self) -> dict:
        return {"clip_len": self.clip_len, "clips": dict(self.count), "videos_without_clip": self.videos_without_clip,
                "backend": "STANDIN" if self.standin else self.backend}

    # ---- persistence (resume) ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        out: dict = {"count_real": self.count["real"], "count_fake": self.count["fake"],
                     "videos_without_clip": self.videos_without_clip, "reference_loaded": self.reference_loaded}
        for w in ("real", "fake"):
            if self.sums[w] is not None:
                out[f"sum_{w}"], out[f"outer_{w}"] = self.sums[w].clone(), self.outer[w].clone()
        return out

    def merge_state(self, state: dict) -> None:
        """Add another shard's running sums, clip counts and short-video count (a ``state_dict()``; DDP ranks)."""
        for w in ("real", "fake"):
            self.count[w] += int(state.get(f"count_{w}", 0))
            if f"sum_{w}" in state:
                s, o = state[f"sum_{w}"].double(), state[f"outer_{w}"].double()
                if self.sums[w] is None:
                    self.sums[w], self.outer[w] = s.clone(), o.clone()
                else:
                    self.sums[w], self.outer[w] = self.sums[w] + s, self.outer[w] + o
        self.videos_without_clip += int(state.get("videos_without_clip", 0))

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        for w in ("real", "fake"):
            self.count[w] = int(state.get(f"count_{w}", 0))
            if f"sum_{w}" in state:
                self.sums[w], self.outer[w] = state[f"sum_{w}"].double(), state[f"outer_{w}"].double()
        self.videos_without_clip = int(state.get("videos_without_clip", 0))
        self.reference_loaded = bool(state.get("reference_loaded", False))
