"""MRFA's convolutional building blocks, prior dense-motion network and occlusion-aware generator, laid out as in
the official code (JialeTao/MRFA, itself built on FOMM, Siarohin et al. NeurIPS 2019) so that an official state
dict loads key for key (``lit_models.mrfa.import_official``).

Conventions that matter for numerical parity with the official code (all reproduced here on purpose):

* identity grids ``make_coordinate_grid`` are ``2·(i/(n-1)) - 1`` (x first), not ``linspace``;
* the dense-motion network samples with ``grid_sample``'s default ``align_corners=False``;
* ``AntiAliasInterpolation2d`` = Gaussian blur (σ = (1/s - 1)/2) then *nearest* resampling;
* up-sampling blocks use nearest ×2 interpolation; every norm is BatchNorm.
"""
from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn


# ---- coordinates ---------------------------------------------------------------------------------------------
def make_coordinate_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Identity grid h×w×2 in [-1, 1], last dim (x, y); FOMM's exact arithmetic."""
    x = torch.arange(w, device=like.device, dtype=like.dtype)
    y = torch.arange(h, device=like.device, dtype=like.dtype)
    x = 2 * (x / (w - 1)) - 1
    y = 2 * (y / (h - 1)) - 1
    return torch.stack([x.view(1, -1).expand(h, w), y.view(-1, 1).expand(h, w)], dim=-1)


def coords_grid(batch: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel identity grid B×2×h×w, channel 0 = x (RAFT's ``coords_grid``)."""
    y, x = torch.meshgrid(torch.arange(h, device=like.device), torch.arange(w, device=like.device), indexing="ij")
    return torch.stack([x, y], 0).to(like.dtype)[None].expand(batch, -1, -1, -1)


def kp2gaussian(kp: torch.Tensor, size, variance: float) -> torch.Tensor:
    """Keypoints B×K×2 (normalised) → Gaussian heatmaps B×K×h×w, ``exp(-|z - p_k|² / (2·variance))``."""
    grid = make_coordinate_grid(size[0], size[1], kp)
    d = grid[None, None] - kp[:, :, None, None, :]
    return torch.exp(-0.5 * (d ** 2).sum(-1) / variance)


def bilinear_sampler(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` at pixel coordinates ``coords`` (…×2, x first; align_corners=True)."""
    H, W = img.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    grid = torch.cat([2 * x / (W - 1) - 1, 2 * y / (H - 1) - 1], dim=-1)
    return F.grid_sample(img, grid, align_corners=True)


# ---- activation checkpointing ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _scratch_batchnorm_stats(module: nn.Module | None):
    """While recomputing in backward, BatchNorm layers of ``module`` update copies of their running statistics
    (thrown away on exit): the batch is not counted twice, and the real buffers are never written (their
    versions, which autograd checks, stay as they are). Train-mode output uses batch statistics only, so the
    recomputation is identical to the first pass."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if module is not None else []
    names = ("running_mean", "running_var", "num_batches_tracked")
    real = [[getattr(m, n) for n in names] for m in bns]
    for m, bufs in zip(bns, real):
        for n, b in zip(names, bufs):
            if b is not None:
                setattr(m, n, b.clone())
    try:
        yield
    finally:
        for m, bufs in zip(bns, real):
            for n, b in zip(names, bufs):
                setattr(m, n, b)


def checkpointed(fn, module: nn.Module | None, *args):
    """``fn(*args)`` under ``torch.utils.checkpoint`` (non-reentrant): its activations are recomputed in backward
    instead of stored. Exact for deterministic code; ``module``: the one holding the BatchNorm layers ``fn`` runs
    (None if none), whose statistics the recomputation must not update."""
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False,
                                             context_fn=lambda: (contextlib.nullcontext(),
                                                                 _scratch_batchnorm_stats(module)))


# ---- blocks (official key names: conv / norm / pool, conv1 / norm1 …) -------------------------------------------
class SameBlock2d(nn.Module):
    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x):
        return self.pool(F.relu(self.norm(self.conv(x))))


class UpBlock2d(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=2))))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: ``x + conv2(relu(norm2(conv1(relu(norm1(x))))))``."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(features, affine=True)
        self.norm2 = nn.BatchNorm2d(features, affine=True)

    def forward(self, x):
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class ChannelBlock2d(nn.Module):
    """norm → ReLU → conv halving the channels (fuses [refined-warp, prior-warp] features in the generator)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features // 2, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(in_features, affine=True)

    def forward(self, x):
        return self.conv1(F.relu(self.norm1(x)))


class _Encoder(nn.Module):
    def __init__(self, block_expansion, in_features, num_blocks, max_features):
        super().__init__()
        ch = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.down_blocks = nn.ModuleList(DownBlock2d(in_features if i == 0 else ch(i), ch(i + 1))
                                         for i in range(num_blocks))

    def forward(self, x):
        outs = [x]
        for blk in self.down_blocks:
            outs.append(blk(outs[-1]))
        return outs


class _Decoder(nn.Module):
    def __init__(self, block_expansion, in_features, num_blocks, max_features):
        super().__init__()
        ch = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.up_blocks = nn.ModuleList(UpBlock2d((1 if i == num_blocks - 1 else 2) * ch(i + 1), ch(i))
                                       for i in reversed(range(num_blocks)))
        self.out_filters = block_expansion + in_features

    def forward(self, xs):
        xs = list(xs)
        out = xs.pop()
        for blk in self.up_blocks:
            out = torch.cat([blk(out), xs.pop()], dim=1)
        return out


class Hourglass(nn.Module):
    """FOMM's U-Net (skip concatenation); output channels ``out_filters = block_expansion + in_features``."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = _Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = _Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Band-limited down-sampling: Gaussian blur with σ = (1/scale - 1)/2, then nearest resampling by ``scale``."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        ks = 2 * round(sigma * 4) + 1
        self.ka = ks // 2
        self.kb = self.ka - 1 if ks % 2 == 0 else self.ka
        grids = torch.meshgrid(torch.arange(ks, dtype=torch.float32), torch.arange(ks, dtype=torch.float32),
                               indexing="ij")
        kernel = 1
        for g in grids:
            kernel = kernel * torch.exp(-(g - (ks - 1) / 2) ** 2 / (2 * sigma ** 2))
        kernel = kernel / torch.sum(kernel)
        self.register_buffer("weight", kernel.view(1, 1, ks, ks).repeat(channels, 1, 1, 1))
        self.groups, self.scale = channels, scale

    def forward(self, x):
        if self.scale == 1.0:
            return x
        padded, weight = F.pad(x, (self.ka, self.kb, self.ka, self.kb)), self.weight.to(x.dtype)
        inv = round(1 / self.scale)
        if 1 / self.scale == inv:
            # nearest resampling by 1/inv keeps the blurred pixels 0, inv, 2·inv, … (F.interpolate's source index
            # floor(i·inv)): compute only those, a stride-inv convolution — the same sums, 1/inv² of the work
            out = F.conv2d(padded, weight=weight, stride=inv, groups=self.groups)
            return out[:, :, :int(x.shape[2] * self.scale), :int(x.shape[3] * self.scale)]
        out = F.conv2d(padded, weight=weight, groups=self.groups)
        return F.interpolate(out, scale_factor=(self.scale, self.scale))


# ---- prior motion: FOMM dense-motion network ---------------------------------------------------------------------
class DenseMotionNetwork(nn.Module):
    """Prior motion (FOMM Eq. 6–8 as used by MRFA): sparse first-order motions ``T_k(z) = p_k^S + J_k (z - p_k^D)``,
    ``J_k = J_k^S (J_k^D)^{-1}``, plus the identity background; masks ``M`` = softmax over K+1; coarse backward flow
    ``T̂(z) = Σ_k M_k(z) T_k(z)`` (B×h×w×2 normalised grid) and the occlusion *logit* ``Ô`` (B×1×h×w; the official
    code applies the sigmoid downstream), at ``scale_factor`` × the image size."""

    def __init__(self, num_kp: int = 10, num_channels: int = 3, block_expansion: int = 64, num_blocks: int = 5,
                 max_features: int = 1024, scale_factor: float = 0.25, kp_variance: float = 0.01,
                 estimate_occlusion_map: bool = True):
        super().__init__()
        self.num_kp, self.scale_factor, self.kp_variance = num_kp, scale_factor, kp_variance
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (num_channels + 1), num_blocks, max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, 7, padding=3) if estimate_occlusion_map else None
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def sparse_motions(self, h, w, kp_source: dict, kp_driving: dict, bg_param=None) -> torch.Tensor:
        ps, pd = kp_source["value"], kp_driving["value"]
        B = ps.shape[0]
        ident = make_coordinate_grid(h, w, ps).view(1, 1, h, w, 2)
        coord = ident - pd.view(B, self.num_kp, 1, 1, 2)
        if "jacobian" in kp_driving and "jacobian" in kp_source:
            # in float32 (torch.inverse has no half / bfloat16 kernels; the official model runs in float32)
            jac = torch.matmul(kp_source["jacobian"].float(), torch.inverse(kp_driving["jacobian"].float()))
            coord = torch.matmul(jac[:, :, None, None], coord.unsqueeze(-1)).squeeze(-1)
        motion = coord + ps.view(B, self.num_kp, 1, 1, 2)
        bg = ident.expand(B, 1, h, w, 2)
        if bg_param is not None:
            hom = torch.cat([bg, torch.ones_like(bg[..., :1])], -1)
            bg = torch.matmul(bg_param.view(B, 1, 1, 1, 3, 3), hom.unsqueeze(-1)).squeeze(-1)
            bg = bg[..., :2] / bg[..., 2:3]
        return torch.cat([bg, motion], dim=1)

    def forward(self, source: torch.Tensor, kp_source: dict, kp_driving: dict, bg_param=None) -> dict:
        if self.scale_factor != 1:
            source = self.down(source)
        B, C, h, w = source.shape
        K1 = self.num_kp + 1
        heat = kp2gaussian(kp_driving["value"], (h, w), self.kp_variance) - \
            kp2gaussian(kp_source["value"], (h, w), self.kp_variance)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1).unsqueeze(2)
        sparse = self.sparse_motions(h, w, kp_source, kp_driving, bg_param)              # B×(K+1)×h×w×2
        deformed = F.grid_sample(source.unsqueeze(1).expand(B, K1, C, h, w).reshape(B * K1, C, h, w),
                                 sparse.reshape(B * K1, h, w, 2), align_corners=False).view(B, K1, C, h, w)
        pred = self.hourglass(torch.cat([heat, deformed], dim=2).view(B, -1, h, w))
        logit_mask = self.mask(pred)
        mask = F.softmax(logit_mask, dim=1)
        deformation = (sparse.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1).permute(0, 2, 3, 1)
        out = {"sparse_deformed": deformed, "logit_mask": logit_mask, "mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_logit"] = self.occlusion(pred)
        return out


# ---- generator -----------------------------------------------------------------------------------------------------
class OcclusionAwareGenerator(nn.Module):
    """Encoder features ``e_s`` at S = num_up_blocks + 1 scales; the decoder blends, per scale, the source features
    warped by the refined motion ``Õ_s ⊙ W(e_s, T̃_s) + (1 - Õ_s) ⊙ h_s`` and concatenates the prior-warped ones
    ``W(e_s, T̂_s)`` (fused by a ``ChannelBlock2d``); the output is ``D̂ = (1 - Õ)·σ(final(h)) + Õ·W(S, T)``."""

    def __init__(self, num_channels: int = 3, block_expansion: int = 64, max_features: int = 512,
                 num_up_blocks: int = 5):
        super().__init__()
        self.num_up_blocks = num_up_blocks
        self.first = SameBlock2d(num_channels, block_expansion, 7)
        ch = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.down_blocks = nn.ModuleList(DownBlock2d(ch(i), ch(i + 1)) for i in range(num_up_blocks))
        self.up_blocks = nn.ModuleList(UpBlock2d(ch(i + 1), ch(i)) for i in reversed(range(num_up_blocks)))
        self.resblock = nn.ModuleList(ResBlock2d(ch(i + 1)) for i in reversed(range(num_up_blocks)))
        self.channel_block = nn.ModuleList(ChannelBlock2d(2 * ch(i + 1)) for i in reversed(range(num_up_blocks)))
        self.final = nn.Conv2d(block_expansion, num_channels, 7, padding=3)
        self.channels = [ch(i) for i in reversed(range(num_up_blocks + 1))]       # coarse → fine

    def encode(self, x):
        """Source features, coarsest first (official order)."""
        f = [self.first(x)]
        for blk in self.down_blocks:
            f.append(blk(f[-1]))
        return f[::-1]

    def decode(self, warp_f, warp_img, occlusion, warp_f_c=None):
        out = warp_f[0] * occlusion[0]
        if warp_f_c is not None:
            out = torch.cat([out, warp_f_c[0]], dim=1)
        for i in range(self.num_up_blocks):
            if warp_f_c is not None:
                out = self.channel_block[i](out)
            out = self.up_blocks[i](self.resblock[i](out))
            out = warp_f[i + 1] * occlusion[i + 1] + out * (1 - occlusion[i + 1])
            if warp_f_c is not None and i != self.num_up_blocks - 1:
                out = torch.cat([out, warp_f_c[i + 1]], dim=1)
        out = torch.sigmoid(self.final(out))
        return out * (1 - occlusion[-1]) + warp_img * occlusion[-1]
