"""Multi-scale perceptual reconstruction loss (FOMM Sec. 3.4: ``L_rec = Σ_scales Σ_i |N_i(D̂) - N_i(D)|`` over
VGG-19 relu{1..5}_1 features of an image pyramid) and its explicitly named offline replacement.

* ``vgg19``: torchvision's ImageNet VGG-19. Its weights are never downloaded here: they are read from
  ``weights_path`` or torchvision's cache (``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``); when absent a
  ``FileNotFoundError`` names the file and where to put it. A randomly initialised VGG is never used.
* ``pyramid_l1_ssim``: per pyramid level ``|D̂ - D|_1 + (1 - SSIM(D̂, D))`` (torchmetrics' SSIM). Offline configs
  name it (``model.perceptual=pyramid_l1_ssim``) and their numbers are labelled by that name.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lit_models.common.warp import downsample_image

VGG19_FILE = "vgg19-dcbb9e9d.pth"
BACKENDS = ("vgg19", "pyramid_l1_ssim")


def vgg19_weights_path(weights_path: str | None = None) -> Path:
    """Where the VGG-19 ImageNet weights are read from; raises with instructions when they are missing."""
    if weights_path:
        path = Path(os.path.expanduser(weights_path))
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"perceptual loss 'vgg19' needs torchvision's ImageNet VGG-19 weights {VGG19_FILE} at {path} "
            f"(download https://download.pytorch.org/models/{VGG19_FILE} there, or set model.vgg_weights=PATH); "
            f"offline, pick the named replacement instead: model.perceptual=pyramid_l1_ssim")
    return path


class VGG19Features(nn.Module):
    """Frozen VGG-19 returning relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of ImageNet-normalised [0, 1] input."""

    SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))

    def __init__(self, weights_path: str | None = None, *, net: nn.Module | None = None):
        """Loads the ImageNet weights (``weights_path`` or torchvision's cache). ``net`` wraps an already built
        torchvision VGG-19 instead (e.g. the benchmark's explicitly labelled timing-only random network)."""
        super().__init__()
        if net is None:
            from torchvision.models import vgg19

            path = vgg19_weights_path(weights_path)
            net = vgg19(weights=None)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        feats = net.features
        self.slices = nn.ModuleList(nn.Sequential(*[feats[i] for i in range(a, b)]) for a, b in self.SLICES)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        out = []
        for s in self.slices:
            h = s(h)
            out.append(h)
        return out


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """1 - SSIM with a Gaussian window sized to the image (None below 5 px, where SSIM is meaningless)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    side = min(pred.shape[-2:])
    if side < 5:
        return None
    k = min(11, side if side % 2 else side - 1)
    return 1 - ssim(pred, target, data_range=1.0, kernel_size=k, sigma=1.5 * k / 11)


class MultiScalePerceptualLoss(nn.Module):
    """``Σ_s Σ_i w_i |N_i(↓_s pred) - N_i(↓_s target)|`` over ``scales`` (e.g. 1, ½, ¼, ⅛)."""

    def __init__(self, backend: str = "vgg19", scales=(1.0, 0.5, 0.25, 0.125), layer_weights=(10, 10, 10, 10, 10),
                 weights_path: str | None = None, pyramid=None):
        """``pyramid``: ``scale -> nn.Module`` building each level's down-sampler (a method's official one, e.g.
        FOMM/MRFA's ``ImagePyramide`` of Gaussian blur + nearest); default ``downsample_image`` (antialiased
        bilinear)."""
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown perceptual backend {backend!r} ({' | '.join(BACKENDS)})")
        self.backend, self.scales, self.layer_weights = backend, tuple(scales), tuple(layer_weights)
        self.vgg = VGG19Features(weights_path) if backend == "vgg19" else None
        self.pyramid = nn.ModuleList([pyramid(s) for s in self.scales]) if pyramid is not None else None

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for i, s in enumerate(self.scales):
            if self.pyramid is not None:
                p, t = self.pyramid[i](pred), self.pyramid[i](target)
            else:
                p, t = downsample_image(pred, s), downsample_image(target, s)
            if self.vgg is not None:
                fp, ft = self.vgg(p), self.vgg(t)
                for w, a, b in zip(self.layer_weights, fp, ft):
                    if w:
                        total = total + w * (a - b.detach()).abs().mean()
            else:
                total = total + (p - t).abs().mean()
                ss = ssim_loss(p, t)
                if ss is not None:
                    total = total + ss
        return total
