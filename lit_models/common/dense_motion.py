"""Dense motion from sparse keypoint motion: FOMM's / TPSMM's dense-motion network, the one used by every MRFA
prior (``mtia`` and ``fomm`` keypoints with Jacobians: FOMM's first-order motions; ``tps``: TPSMM's).

Paper symbols: the network predicts masks ``M_k`` over the K+1 sparse motions (background + one per keypoint or
TPS transform) and the coarse backward flow ``T̂_{S<-D}(z) = Σ_k M_k(z) T_k(z)`` plus an occlusion map ``Ô``
(FOMM Eq. 6–8; TPSMM Eq. 4–5). Here both are produced at ``scale_factor`` × the image resolution; MRFA calls
this pair the *prior motion*. ``align_corners`` picks the sampling convention (``lit_models.common.warp``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.common.hourglass import DownBlock2d, Hourglass, SameBlock2d
from lit_models.common.keypoints import kp2gaussian, tps_apply, tps_fit
from lit_models.common.warp import AntiAliasInterpolation2d, downsample_image, make_coordinate_grid


def fomm_sparse_motion(h: int, w: int, kp_source: dict, kp_driving: dict, *,
                       fomm_arithmetic: bool = False) -> torch.Tensor:
    """First-order motion per keypoint: ``T_k(z) = p_k^S + J_k (z - p_k^D)``, ``J_k = J_k^S (J_k^D)^{-1}``.
    Returns B×K×h×w×2."""
    ps, pd = kp_source["value"], kp_driving["value"]
    grid = make_coordinate_grid(h, w, ps.device, ps.dtype, fomm_arithmetic=fomm_arithmetic)
    coord = grid[None, None] - pd[:, :, None, None, :]                         # B×K×h×w×2
    if "jacobian" in kp_source and "jacobian" in kp_driving:
        # in float32 (torch.inverse has no half / bfloat16 kernels; the official model runs in float32)
        jac = torch.matmul(kp_source["jacobian"].float(), torch.inverse(kp_driving["jacobian"].float()))  # B×K×2×2
        coord = torch.matmul(jac[:, :, None, None], coord.unsqueeze(-1)).squeeze(-1)
    return coord + ps[:, :, None, None, :]


def tps_sparse_motion(h: int, w: int, kp_source: dict, kp_driving: dict, num_tps: int) -> torch.Tensor:
    """TPS motion per group of keypoints: ``T_k`` maps the driving keypoints of group k onto the source ones.
    Returns B×K×h×w×2."""
    ps = kp_source["value"].view(kp_source["value"].shape[0], num_tps, -1, 2)
    pd = kp_driving["value"].view_as(ps)
    wts, A = tps_fit(pd, ps)
    grid = make_coordinate_grid(h, w, ps.device, wts.dtype).view(1, 1, h * w, 2)
    return tps_apply(grid, pd.to(wts.dtype), wts, A).view(ps.shape[0], num_tps, h, w, 2)


class BGMotionPredictor(nn.Module):
    """TPSMM's background motion: an affine ``A_bg`` (3×3, last row fixed) regressed from [S, D], initialised to
    the identity."""

    def __init__(self, num_channels: int = 3, block_expansion: int = 32, num_blocks: int = 4, norm: str = "batch"):
        super().__init__()
        layers, c = [SameBlock2d(2 * num_channels, block_expansion, 7, norm)], block_expansion
        for _ in range(num_blocks):
            layers.append(DownBlock2d(c, min(512, c * 2), norm))
            c = min(512, c * 2)
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, 6)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        p = self.fc(self.net(torch.cat([source, driving], 1))).view(-1, 2, 3)
        last = torch.tensor([0.0, 0, 1], device=p.device, dtype=p.dtype).expand(p.shape[0], 1, 3)
        return torch.cat([p, last], dim=1)


class DenseMotionNetwork(nn.Module):
    """Sparse motions + deformed sources + keypoint heatmap differences → Hourglass → masks ``M`` (softmax over
    K+1), coarse flow ``deformation`` (B×h×w×2 grid) and occlusion logit ``Ô`` (the official code applies the
    sigmoid downstream; ``occlusion`` holds it too).

    ``prior`` picks the sparse motion and the Hourglass input layout of its official code: ``fomm`` (keypoints +
    Jacobians; per motion k the channels [heatmap_k, deformed source_k], FOMM ``dense_motion.py``) or ``tps``
    ([all heatmaps; all deformed sources], TPSMM). ``align_corners=False`` is the official FOMM / MRFA sampling
    convention (FOMM's grid arithmetic, ``AntiAliasInterpolation2d`` down-sampling held as ``down``, as in
    official checkpoints); ``True`` the ``lit_models.common.warp`` one (linspace grids, ``downsample_image``)."""

    def __init__(self, prior: str = "fomm", num_kp: int = 10, points_per_tps: int = 5, num_channels: int = 3,
                 block_expansion: int = 64, num_blocks: int = 5, max_features: int = 1024, scale_factor: float = 0.25,
                 kp_variance: float = 0.01, estimate_occlusion: bool = True, norm: str = "batch",
                 align_corners: bool = False):
        super().__init__()
        if prior not in ("fomm", "tps"):
            raise ValueError(f"unknown prior motion {prior!r} (fomm | tps)")
        self.prior, self.num_kp, self.scale_factor, self.kp_variance = prior, num_kp, scale_factor, kp_variance
        self.align_corners = align_corners
        num_points = num_kp * (points_per_tps if prior == "tps" else 1)
        in_features = (num_points + 1) + (num_kp + 1) * num_channels
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks, max_features, norm)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, 7, padding=3) if estimate_occlusion else None
        if scale_factor != 1 and not align_corners:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def _grid(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        return make_coordinate_grid(h, w, like.device, like.dtype, fomm_arithmetic=not self.align_corners)

    def sparse_motion(self, h: int, w: int, kp_source: dict, kp_driving: dict, bg_param=None) -> torch.Tensor:
        """B×(K+1)×h×w×2: background (identity, or the affine ``A_bg``) followed by the K keypoint / TPS motions."""
        if self.prior == "fomm":
            motions = fomm_sparse_motion(h, w, kp_source, kp_driving, fomm_arithmetic=not self.align_corners)
        else:
            motions = tps_sparse_motion(h, w, kp_source, kp_driving, self.num_kp)
        B = motions.shape[0]
        bg = self._grid(h, w, motions).view(1, 1, h, w, 2).expand(B, 1, h, w, 2)
        if bg_param is not None:
            hom = torch.cat([bg, torch.ones_like(bg[..., :1])], -1)
            bg = torch.matmul(bg_param.to(hom.dtype).view(B, 1, 1, 1, 3, 3), hom.unsqueeze(-1)).squeeze(-1)
            bg = bg[..., :2] / bg[..., 2:3]
        return torch.cat([bg, motions], dim=1)

    def forward(self, source: torch.Tensor, kp_source: dict, kp_driving: dict, bg_param=None) -> dict:
        if self.align_corners:
            source = downsample_image(source, self.scale_factor)
        elif self.scale_factor != 1:
            source = self.down(source)
        B, C, h, w = source.shape
        heat = kp2gaussian(kp_driving["value"], (h, w), self.kp_variance, fomm_arithmetic=not self.align_corners) \
            - kp2gaussian(kp_source["value"], (h, w), self.kp_variance, fomm_arithmetic=not self.align_corners)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)
        sparse = self.sparse_motion(h, w, kp_source, kp_driving, bg_param)              # B×(K+1)×h×w×2
        K1 = sparse.shape[1]
        deformed = F.grid_sample(source.unsqueeze(1).expand(B, K1, C, h, w).reshape(B * K1, C, h, w),
                                 sparse.reshape(B * K1, h, w, 2), align_corners=self.align_corners)
        deformed = deformed.view(B, K1, C, h, w)
        if self.prior == "fomm":
            inp = torch.cat([heat.unsqueeze(2), deformed], dim=2).view(B, -1, h, w)
        else:
            inp = torch.cat([heat, deformed.view(B, K1 * C, h, w)], dim=1)
        pred = self.hourglass(inp)
        logit_mask = self.mask(pred)
        mask = F.softmax(logit_mask, dim=1)
        deformation = (sparse.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1).permute(0, 2, 3, 1)
        if self.align_corners:
            # stored B×h×w×2 like every lit_models.common grid; the official convention keeps the official code's
            # channel-first storage (the strides decide the summation order of the convolutions downstream)
            deformation = deformation.contiguous()
        out = {"sparse_deformed": deformed, "logit_mask": logit_mask, "mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            logit = self.occlusion(pred)
            out["occlusion_logit"], out["occlusion"] = logit, torch.sigmoid(logit)
        return out
