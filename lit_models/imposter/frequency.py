"""ImPoster's frequency guidance terms (paper: phase of F(x) toward the driving image, amplitude toward the source).

Pure functions on B×C×H×W tensors (latents or images); everything is differentiable so the guidance gradient
reaches the latent. With ``X = F(x - mean(x))`` (2-D FFT per channel, DC removed) and ``D = F(driving)``:

* ``phase_score(x, d) = Re Σ X·conj(D) / Σ |X||D|`` — the amplitude-weighted mean of ``cos(φ_X - φ_D)``, in
  [-1, 1], 1 when the phases agree everywhere (the table's "phase score").
* ``phase_loss = 1 - phase_score``.
* ``amplitude_loss(x, s) = mean |log(1+|X|) - log(1+|S|)|`` — the amplitude spectrum toward the source's.
"""
from __future__ import annotations

import torch

_EPS = 1e-8


def _spectrum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    f = torch.fft.fft2(x, norm="ortho")
    return f.real, f.imag


def _amp(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    # sqrt(re^2 + im^2 + eps): differentiable at 0, unlike torch.abs on complex numbers
    return torch.sqrt(re * re + im * im + _EPS)


def phase_score(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Amplitude-weighted phase coherence of ``x`` and ``ref`` per sample (B), in [-1, 1]."""
    if x.shape != ref.shape:
        raise ValueError(f"phase_score needs equal shapes, got {tuple(x.shape)} and {tuple(ref.shape)}")
    xr, xi = _spectrum(x)
    rr, ri = _spectrum(ref)
    cross = (xr * rr + xi * ri).flatten(1).sum(1)              # Re Σ X conj(R)
    norm = (_amp(xr, xi) * _amp(rr, ri)).flatten(1).sum(1)
    return cross / norm.clamp_min(_EPS)


def phase_loss(x: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
    """``L_phase`` per sample (B): 1 - phase_score(x, driving), in [0, 2]."""
    return 1.0 - phase_score(x, driving)


def amplitude_loss(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``L_amp`` per sample (B): mean absolute difference of log-amplitude spectra."""
    xr, xi = _spectrum(x)
    sr, si = _spectrum(source)
    return (torch.log1p(_amp(xr, xi)) - torch.log1p(_amp(sr, si))).abs().flatten(1).mean(1)


def frequency_guidance_loss(x: torch.Tensor, driving: torch.Tensor, source: torch.Tensor, phase_weight: float,
                            amp_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum (per sample, B) and its parts; a weight of 0 skips its term."""
    parts: dict[str, torch.Tensor] = {}
    total = torch.zeros(x.shape[0], device=x.device)
    if phase_weight > 0:
        parts["phase"] = phase_loss(x, driving)
        total = total + phase_weight * parts["phase"]
    if amp_weight > 0:
        parts["amp"] = amplitude_loss(x, source)
        total = total + amp_weight * parts["amp"]
    return total, parts


def to_gray(img: torch.Tensor) -> torch.Tensor:
    """B×3×H×W in [0, 1] -> B×1×H×W luma (ITU-R BT.601), for image-space phase scores."""
    w = img.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)
