"""Unsupervised motion keypoints: FOMM's detector with local affine Jacobians and TPSMM's thin-plate-spline
keypoints, plus the random transform used by the equivariance losses.

Paper symbols: FOMM (Siarohin et al. 2019) keypoints ``p_k`` with Jacobians ``J_k = d T_{X<-R}/dp |_{p_k}``
(Eq. 4); TPSMM (Zhao & Zhang, CVPR 2022) ``K`` thin-plate-spline transforms ``T_k`` each fitted to ``N = 5``
keypoints (Eq. 1–3). Keypoints live in normalised (x, y) ∈ [-1, 1]² coordinates (``lit_models.common.warp``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.common.hourglass import DownBlock2d, Hourglass, SameBlock2d
from lit_models.common.warp import downsample_image, make_coordinate_grid


def kp2gaussian(kp: torch.Tensor, spatial_size, kp_variance: float, *, fomm_arithmetic: bool = False) -> torch.Tensor:
    """Keypoints B×K×2 → isotropic Gaussian maps B×K×H×W, ``exp(-|z - p_k|² / (2 σ²))`` with σ² = kp_variance (FOMM).
    ``fomm_arithmetic``: the grid convention of the official code (``lit_models.common.warp``)."""
    h, w = spatial_size
    grid = make_coordinate_grid(h, w, kp.device, kp.dtype, fomm_arithmetic=fomm_arithmetic)   # H×W×2
    diff = grid[None, None] - kp[:, :, None, None, :]                        # B×K×H×W×2
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / kp_variance)


# ---- thin-plate splines ---------------------------------------------------------------------------------------
def _tps_kernel(r2: torch.Tensor) -> torch.Tensor:
    """TPS radial basis U(r) = r² log r² (0 at r = 0)."""
    return r2 * torch.log(r2 + 1e-9)


def tps_fit(ctrl: torch.Tensor, values: torch.Tensor, reg: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``f(z) = A [1, z] + Σ_i w_i U(|z - c_i|²)`` with ``f(c_i) = values_i``.

    ctrl, values: …×N×2. Returns (w …×N×2, A …×3×2) by solving the standard (N+3)×(N+3) TPS system."""
    ctrl, values = ctrl.float(), values.float()        # solved in fp32 (also under autocast)
    n = ctrl.shape[-2]
    r2 = ((ctrl[..., :, None, :] - ctrl[..., None, :, :]) ** 2).sum(-1)
    K = _tps_kernel(r2) + reg * torch.eye(n, device=ctrl.device, dtype=ctrl.dtype)
    P = torch.cat([torch.ones_like(ctrl[..., :1]), ctrl], dim=-1)           # …×N×3
    zeros = torch.zeros(*ctrl.shape[:-2], 3, 3, device=ctrl.device, dtype=ctrl.dtype)
    L = torch.cat([torch.cat([K, P], -1), torch.cat([P.transpose(-1, -2), zeros], -1)], -2)
    Y = torch.cat([values, torch.zeros(*values.shape[:-2], 3, 2, device=values.device, dtype=values.dtype)], -2)
    sol = torch.linalg.solve(L, Y)
    return sol[..., :n, :], sol[..., n:, :]


def tps_apply(points: torch.Tensor, ctrl: torch.Tensor, w: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Evaluate a fitted TPS at points …×M×2 (ctrl/w/A broadcast over the leading dims)."""
    r2 = ((points[..., :, None, :] - ctrl[..., None, :, :]) ** 2).sum(-1)   # …×M×N
    P = torch.cat([torch.ones_like(points[..., :1]), points], dim=-1)
    return P @ A + _tps_kernel(r2) @ w


# ---- detectors -----------------------------------------------------------------------------------------------
class KPDetector(nn.Module):
    """FOMM keypoint detector: Hourglass → K heatmaps (spatial softmax, temperature τ) → ``p_k = Σ_z H_k(z) z``;
    Jacobians ``J_k = Σ_z H_k(z) J(z)`` from a 4K-channel regression map initialised to the identity."""

    def __init__(self, num_kp: int = 10, num_channels: int = 3, block_expansion: int = 32, max_features: int = 1024,
                 num_blocks: int = 5, temperature: float = 0.1, scale_factor: float = 0.25,
                 estimate_jacobian: bool = True, norm: str = "batch"):
        super().__init__()
        self.num_kp, self.temperature, self.scale_factor = num_kp, temperature, scale_factor
        self.predictor = Hourglass(block_expansion, num_channels, num_blocks, max_features, norm)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, 7, padding=3)
        self.jacobian = None
        if estimate_jacobian:
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * num_kp, 7, padding=3)
            nn.init.zeros_(self.jacobian.weight)
            with torch.no_grad():
                self.jacobian.bias.copy_(torch.tensor([1.0, 0, 0, 1] * num_kp))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.predictor(downsample_image(x, self.scale_factor))
        logits = self.kp(feat)
        B, K, h, w = logits.shape
        heat = F.softmax(logits.flatten(2) / self.temperature, dim=-1).view(B, K, h, w)
        grid = make_coordinate_grid(h, w, x.device, heat.dtype)
        heat = heat.float()     # keypoints and Jacobians in fp32 (they are inverted / solved downstream)
        grid = grid.float()
        out = {"value": torch.einsum("bkhw,hwc->bkc", heat, grid)}
        if self.jacobian is not None:
            jac = self.jacobian(feat).view(B, K, 4, h, w).float()
            out["jacobian"] = torch.einsum("bkhw,bkjhw->bkj", heat, jac).view(B, K, 2, 2)
        return out


class TPSKPDetector(nn.Module):
    """TPSMM keypoint detector: a CNN regresses ``num_tps × 5`` keypoints (tanh → [-1, 1]). TPSMM uses a
    ResNet-18 trained from scratch; ``backbone='resnet18'`` builds exactly that (torchvision, no pretrained
    weights by design), ``backbone='conv'`` a small strided CNN for tiny configs."""

    def __init__(self, num_tps: int = 10, points_per_tps: int = 5, num_channels: int = 3,
                 backbone: str = "resnet18", block_expansion: int = 32, num_blocks: int = 4, norm: str = "batch"):
        super().__init__()
        self.num_tps, self.points_per_tps = num_tps, points_per_tps
        n_out = num_tps * points_per_tps * 2
        if backbone == "resnet18":
            from torchvision.models import resnet18

            self.net = resnet18(weights=None, num_classes=n_out)
        elif backbone == "conv":
            layers, c = [SameBlock2d(num_channels, block_expansion, 7, norm)], block_expansion
            for _ in range(num_blocks):
                layers.append(DownBlock2d(c, min(512, c * 2), norm))
                c = min(512, c * 2)
            self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_out))
        else:
            raise ValueError(f"unknown TPS keypoint backbone {backbone!r} (resnet18 | conv)")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = torch.tanh(self.net(x).float())
        return {"value": out.view(x.shape[0], self.num_tps * self.points_per_tps, 2)}


# ---- random transform for the equivariance losses -------------------------------------------------------------
class RandomTransform:
    """FOMM's random deformation ``T_{X<-Y}``: a random affine map plus a random radial-basis (TPS) displacement
    on a ``points_tps × points_tps`` control lattice, exactly as the official ``Transform`` (FOMM, MRFA). ``transform_frame`` warps an image by it; ``warp_coordinates``
    maps keypoints of the transformed frame back; ``jacobian`` differentiates that map (autograd)."""

    def __init__(self, batch_size: int, sigma_affine: float = 0.05, sigma_tps: float = 0.005, points_tps: int = 5,
                 device=None, generator: torch.Generator | None = None, align_corners: bool = True):
        # align_corners of the frame warp: FOMM was written for torch 1.0 (whose grid_sample behaved as True); MRFA's
        # official code calls grid_sample without it on torch >= 1.3, i.e. False
        self.align_corners = align_corners
        noise = torch.randn(batch_size, 2, 3, generator=generator) * sigma_affine
        self.theta = (noise + torch.eye(2, 3)[None]).to(device)
        self.control_points = make_coordinate_grid(points_tps, points_tps).view(1, -1, 2).to(device)
        self.control_params = (torch.randn(batch_size, 1, points_tps ** 2, generator=generator) * sigma_tps).to(device)

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """coords B×N×2 → transformed B×N×2."""
        theta = self.theta.to(coords.dtype)
        out = coords @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
        # the official (FOMM / MRFA ``Transform``) radial term: d² log(d + 1e-6) of the L1 distance d = |z - c|₁
        # to each control point — not the textbook r² log r² of the L2 distance (``_tps_kernel``, used by tps_fit)
        d = (coords[:, :, None, :] - self.control_points[:, None].to(coords.dtype)).abs().sum(-1)  # B×N×P
        return out + (d ** 2 * torch.log(d + 1e-6) * self.control_params.to(coords.dtype)).sum(-1, keepdim=True)

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        B, _, h, w = frame.shape
        grid = make_coordinate_grid(h, w, frame.device, frame.dtype).view(1, h * w, 2).expand(B, -1, -1)
        grid = self.warp_coordinates(grid).view(B, h, w, 2)
        return F.grid_sample(frame, grid, padding_mode="reflection", align_corners=self.align_corners)

    def jacobian(self, coords: torch.Tensor) -> torch.Tensor:
        """d warp_coordinates / d coords at coords B×N×2 → B×N×2×2 (differentiable w.r.t. coords' graph)."""
        with torch.enable_grad():
            c = coords if coords.requires_grad else coords.detach().requires_grad_(True)
            new = self.warp_coordinates(c)
            gx = torch.autograd.grad(new[..., 0].sum(), c, create_graph=True)[0]
            gy = torch.autograd.grad(new[..., 1].sum(), c, create_graph=True)[0]
        return torch.stack([gx, gy], dim=-2)
