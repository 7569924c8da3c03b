"""Appearance augmentation of the driving input (identity-leakage guard of X-Portrait and X-NeMo).

``D̃ = A(D)`` changes appearance only — colour jitter (brightness, contrast, saturation, hue), random grayscale,
channel permutation and Gaussian blur, one draw per clip applied to all its frames — never geometry, so the motion
the target shows is unchanged. Draws come from an explicit generator (deterministic per training step).
"""
from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def appearance_augment(frames: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """frames: B×T×3×H×W in [0, 1] → same shape, one random appearance change per clip."""
    if strength <= 0:
        return frames
    out = []
    for clip in frames:                                  # T×3×H×W
        x = clip
        x = TF.adjust_brightness(x, _u(generator, 1 - 0.4 * strength, 1 + 0.4 * strength))
        x = TF.adjust_contrast(x, _u(generator, 1 - 0.4 * strength, 1 + 0.4 * strength))
        x = TF.adjust_saturation(x, _u(generator, 1 - 0.6 * strength, 1 + 0.6 * strength))
        x = TF.adjust_hue(x, _u(generator, -0.1 * strength, 0.1 * strength))
        if float(torch.rand((), generator=generator)) < 0.5 * strength:
            perm = torch.randperm(3, generator=generator)
            x = x[:, perm]
        if float(torch.rand((), generator=generator)) < 0.2 * strength:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        sigma = _u(generator, 0.1, 0.1 + 1.5 * strength)
        k = max(3, int(2 * round(2 * sigma) + 1))
        x = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
        out.append(x.clamp(0, 1))
    return torch.stack(out)
