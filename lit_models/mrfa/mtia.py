"""MTIA keypoint detector: MRFA's default prior (official ``prior_model: mtia``, ``TokenPose_B``).

An HRNet stem (two stride-2 convolutions, ``stem_blocks`` bottlenecks, stages 2 and 3 with multi-resolution fusion)
gives a feature map at 1/4 of the image; a TokenPose-style transformer over its ``patch_size``² patches carries
2·K learnable tokens (K keypoint tokens + K Jacobian tokens) and a fixed sine position embedding that is re-added to
the image tokens before every layer (``sine-full``). Heads: keypoints ``p_k = 2σ(MLP(t_k)) - 1`` ∈ (-1, 1)² and
Jacobians ``J_k = MLP_J(t_{K+k})`` (2×2, initialised to the identity). Key names match the official checkpoint.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# ---- HRNet (official hr_base.HRNET_base, stages 2–3) ----------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + res)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        res = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + res)


def _conv_bn(cin, cout, k, stride, relu):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks + fusion (sum of up-/down-sampled branches, then ReLU)."""

    def __init__(self, in_channels: list[int], channels: list[int], blocks: list[int], multi_scale_output: bool):
        super().__init__()
        nb = len(channels)
        branches = []
        for b in range(nb):
            down = None
            if in_channels[b] != channels[b]:
                down = _conv_bn(in_channels[b], channels[b], 1, 1, False)
            layers = [BasicBlock(in_channels[b], channels[b], 1, down)]
            layers += [BasicBlock(channels[b], channels[b]) for _ in range(1, blocks[b])]
            branches.append(nn.Sequential(*layers))
        self.branches = nn.ModuleList(branches)
        self.fuse_layers = None
        if nb > 1:
            fuse = []
            for i in range(nb if multi_scale_output else 1):
                row = []
                for j in range(nb):
                    if j > i:
                        row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, 1, 0, bias=False),
                                                 nn.BatchNorm2d(channels[i]),
                                                 nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                    elif j == i:
                        row.append(None)
                    else:
                        row.append(nn.Sequential(*[
                            _conv_bn(channels[j], channels[i] if k == i - j - 1 else channels[j], 3, 2,
                                     relu=k != i - j - 1) for k in range(i - j)]))
                fuse.append(nn.ModuleList(row))
            self.fuse_layers = nn.ModuleList(fuse)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [br(x) for br, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else row[j](xs[j]))
            out.append(F.relu(y))
        return out


class HRNetStem(nn.Module):
    """Official ``HRNET_base``: output = the highest-resolution branch of stage 3 (1/4 of the image)."""

    def __init__(self, stem_channels: int = 64, stem_blocks: int = 4,
                 stage2_channels=(32, 64), stage2_blocks=(4, 4), stage2_modules: int = 1,
                 stage3_channels=(32, 64, 128), stage3_blocks=(4, 4, 4), stage3_modules: int = 4):
        super().__init__()
        c = stem_channels
        self.conv1 = nn.Conv2d(3, c, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        down = _conv_bn(c, c * 4, 1, 1, False)
        self.layer1 = nn.Sequential(Bottleneck(c, c, 1, down), *[Bottleneck(c * 4, c) for _ in range(1, stem_blocks)])
        s2, s3 = list(stage2_channels), list(stage3_channels)
        self.transition1 = self._transition([c * 4], s2)
        self.stage2 = nn.Sequential(*[HighResolutionModule(s2, s2, list(stage2_blocks), True)
                                      for _ in range(stage2_modules)])
        self.transition2 = self._transition(s2, s3)
        self.stage3 = nn.Sequential(*[HighResolutionModule(s3, s3, list(stage3_blocks), m < stage3_modules - 1)
                                      for m in range(stage3_modules)])
        self.out_channels = s3[0]

    @staticmethod
    def _transition(pre: list[int], cur: list[int]) -> nn.ModuleList:
        layers = []
        for i in range(len(cur)):
            if i < len(pre):
                layers.append(_conv_bn(pre[i], cur[i], 3, 1, True) if cur[i] != pre[i] else None)
            else:
                layers.append(nn.Sequential(*[_conv_bn(pre[-1], cur[i] if j == i - len(pre) else pre[-1], 3, 2, True)
                                              for j in range(i + 1 - len(pre))]))
        return nn.ModuleList(layers)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2([t(x) if t is not None else x for t in self.transition1])
        xs = [t(ys[-1]) if t is not None else ys[i] for i, t in enumerate(self.transition2)]
        return self.stage3(xs)[0]


# ---- TokenPose transformer (official tokenpose_base.TokenPose_TB_base, sine-full, Jacobian tokens) -----------------
class _Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class _PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class _Attention(nn.Module):
    """Multi-head self-attention, scale ``(dim/heads)^-1/2`` (scale_with_head)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class _FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class _Transformer(nn.Module):
    def __init__(self, dim, depth, heads, mlp_dim, num_tokens):
        super().__init__()
        self.num_tokens = num_tokens
        self.layers = nn.ModuleList(nn.ModuleList([_Residual(_PreNorm(dim, _Attention(dim, heads))),
                                                   _Residual(_PreNorm(dim, _FeedForward(dim, mlp_dim)))])
                                    for _ in range(depth))

    def forward(self, x, pos):
        n = self.num_tokens
        for idx, (attn, ff) in enumerate(self.layers):
            if idx > 0:   # sine-full: the position embedding is added to the image tokens before every layer
                x = torch.cat([x[:, :n], x[:, n:] + pos], dim=1)
            x = ff(attn(x))
        return x


def sine_position_embedding(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR-style 2-D sine embedding 1×(h·w)×dim ([y | x] halves), TokenPose's ``_make_sine_position_embedding``."""
    scale, eps = 2 * math.pi, 1e-6
    area = torch.ones(1, h, w)
    y = area.cumsum(1, dtype=torch.float32)
    x = area.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2).flatten(2).permute(0, 2, 1)


class TokenPoseHead(nn.Module):
    def __init__(self, feature_size: int, patch_size: int, num_kp: int, dim: int, depth: int, heads: int,
                 mlp_ratio: int, channels: int, estimate_jacobian: bool = True):
        super().__init__()
        if feature_size % patch_size:
            raise ValueError(f"model.mtia: feature size {feature_size} (resolution / 4) is not divisible by "
                             f"patch_size {patch_size}")
        g = feature_size // patch_size
        self.patch_size, self.num_kp = patch_size, num_kp
        self.keypoint_token = nn.Parameter(torch.zeros(1, 2 * num_kp, dim))
        self.pos_embedding = nn.Parameter(sine_position_embedding(g, g, dim), requires_grad=False)
        self.patch_to_embedding = nn.Linear(channels * patch_size ** 2, dim)
        self.transformer = _Transformer(dim, depth, heads, dim * mlp_ratio, 2 * num_kp)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2))
        self.mlp_head_jacobian = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4)) if estimate_jacobian else None
        nn.init.trunc_normal_(self.keypoint_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.mlp_head_jacobian is not None:
            with torch.no_grad():
                self.mlp_head_jacobian[-1].weight.zero_()
                self.mlp_head_jacobian[-1].bias.copy_(torch.tensor([1.0, 0, 0, 1]))

    def forward(self, feature: torch.Tensor) -> dict:
        b, c, H, W = feature.shape
        p = self.patch_size
        # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
        x = feature.view(b, c, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (H // p) * (W // p), -1)
        x = self.patch_to_embedding(x)
        pos = self.pos_embedding[:, :x.shape[1]]
        x = torch.cat([self.keypoint_token.expand(b, -1, -1), x + pos], dim=1)
        x = self.transformer(x, pos)
        K = self.num_kp
        out = {"value": 2 * torch.sigmoid(self.mlp_head(x[:, :K])) - 1}
        if self.mlp_head_jacobian is not None:
            out["jacobian"] = self.mlp_head_jacobian(x[:, K:2 * K]).view(b, K, 2, 2)
        return out


class MTIAKeypointDetector(nn.Module):
    """``{"value": B×K×2, "jacobian": B×K×2×2}`` from an image B×3×H×W in [0, 1]."""

    def __init__(self, resolution: int, num_kp: int = 10, dim: int = 192, depth: int = 12, heads: int = 8,
                 mlp_ratio: int = 3, patch_size: int = 4, stem_channels: int = 64, stem_blocks: int = 4,
                 stage2_channels=(32, 64), stage2_blocks=(4, 4), stage2_modules: int = 1,
                 stage3_channels=(32, 64, 128), stage3_blocks=(4, 4, 4), stage3_modules: int = 4,
                 estimate_jacobian: bool = True):
        super().__init__()
        self.pre_feature = HRNetStem(stem_channels, stem_blocks, stage2_channels, stage2_blocks, stage2_modules,
                                     stage3_channels, stage3_blocks, stage3_modules)
        self.transformer = TokenPoseHead(resolution // 4, patch_size, num_kp, dim, depth, heads, mlp_ratio,
                                         self.pre_feature.out_channels, estimate_jacobian)

    def forward(self, x: torch.Tensor) -> dict:
        return self.transformer(self.pre_feature(x))
