"""Config schema of MRFA (Tao et al., Learning Motion Refinement for Unsupervised Face Animation, NeurIPS 2023).

Ablation axis: ``refine_iters`` (K). Loss weights ``lambda_<name>`` (0 skips computing the term).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lit_models.base import ModelConfig
from lit_models.registry import model_schema


@model_schema("mrfa")
@dataclass
class MRFAConfig(ModelConfig):
    _target_: str = "lit_models.mrfa.MRFA"
    name: str = "mrfa"
    resolution: int = 256
    num_channels: int = 3
    norm: str = "batch"                 # batch (paper) | group | instance | none, for every sub-network
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])   # FOMM/MRFA's Adam betas

    # ---- prior motion (FOMM keypoints + Jacobians, or TPSMM thin-plate splines) ----
    prior: str = "fomm"                 # fomm | tps
    num_kp: int = 10                    # keypoints (fomm) or TPS transforms (tps)
    points_per_tps: int = 5
    use_jacobian: bool = True           # fomm: local affine Jacobians (False: zeroth-order keypoints)
    kp_block_expansion: int = 32
    kp_max_features: int = 1024
    kp_num_blocks: int = 5
    kp_scale_factor: float = 0.25
    kp_temperature: float = 0.1
    tps_backbone: str = "resnet18"      # resnet18 (TPSMM, trained from scratch) | conv
    dm_block_expansion: int = 64
    dm_max_features: int = 1024
    dm_num_blocks: int = 5
    dm_scale_factor: float = 0.25       # prior flow / occlusion resolution = resolution × this
    kp_variance: float = 0.01
    use_bg_motion: bool = False         # TPSMM background affine (enables lambda_bg)

    # ---- structure correlation volume ----
    corr_scale: float = 0.25            # correlation resolution = resolution × this (official: size // 4)
    corr_dim: int = 256                 # projected structure-feature dimension
    corr_levels: int = 2                # correlation pyramid levels (avg-pooled over the source dims)
    corr_radius: int = 3                # lookup window (2r+1)² per level
    struct_kp_variance: float = 0.1
    struct_block_expansion: int = 32
    struct_num_blocks: int = 3
    struct_max_features: int = 256

    # ---- refinement ----
    refine_iters: int = 6               # K; 0 = prior-only model; mapping onto scales: lit_models/mrfa/refine.py
    refine_schedule: str = "spread"     # spread (K steps spread coarsest→finest) | coarse (the K coarsest scales)
    refine_channels: int = 64           # width of the update block
    context_channels: int = 64          # width of the per-scale context projection of warped features

    # ---- generator ----
    gen_block_expansion: int = 64
    gen_max_features: int = 512
    gen_num_down_blocks: int = 5        # scales = down blocks + 1 (6 at 256²: 8² … 256²)
    gen_num_bottleneck_blocks: int = 2
    use_source_blend: bool = True       # D̂ = Ô·W(S, T) + (1 - Ô)·G at the finest scale (TPSMM / official MRFA)

    # ---- losses ----
    perceptual: str = "vgg19"           # vgg19 (needs ImageNet weights) | pyramid_l1_ssim (named offline stand-in)
    vgg_weights: Optional[str] = None   # default: torchvision cache …/hub/checkpoints/vgg19-dcbb9e9d.pth
    perceptual_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    perceptual_layer_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 10.0, 10.0, 10.0])
    lambda_perceptual: float = 1.0
    lambda_prior_perceptual: float = 0.0    # perceptual loss on the prior-only output too (K > 0)
    lambda_equivariance_value: float = 10.0
    lambda_equivariance_jacobian: float = 10.0
    lambda_bg: float = 0.0              # needs use_bg_motion
    sigma_affine: float = 0.05          # equivariance transform
    sigma_tps: float = 0.005
    points_tps: int = 5

    # ---- schedule / inference ----
    lr_milestones: list[int] = field(default_factory=list)   # MultiStepLR milestones in optimizer steps
    lr_gamma: float = 0.1
    animate_chunk: int = 16             # frames per forward in animate()
