"""Config schema of MRFA (Tao et al., Learning Motion Refinement for Unsupervised Face Animation, NeurIPS 2023).

The defaults are the official VoxCeleb network (JialeTao/MRFA ``config/vox1.yaml``, 114,339,206 parameters without
the loss VGG). Every size of a sub-network lives in its named group (``mtia``, ``dense_motion``, ``generator``,
``driving_encoder``, ``source_encoder``, ``refiner``) and is passed to the sub-network as keywords; the official
``reduced_config.yaml`` of the golden fixtures is the same class with smaller values
(``experiments/configs/model/mrfa_reduced.yaml``).

Ablation axis: ``refine_iters`` (K; 6 = official, K < 6 the official fewer-steps variant, 0 = prior only) with
``refine_schedule`` (``official`` | ``spread``). Loss weights ``lambda_<name>`` (0 skips computing the term).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from lit_models.base import ModelConfig
from lit_models.optim import AdamConfig, MultiStepLRConfig
from lit_models.registry import model_schema

# choice fields as StrEnums: a bad value fails at compose time naming the key and the choices
Prior = StrEnum("Prior", ["mtia", "fomm", "tps"])
Norm = StrEnum("Norm", ["batch", "group", "instance", "none"])          # lit_models.common.hourglass.make_norm
RefineSchedule = StrEnum("RefineSchedule", ["official", "spread"])
Perceptual = StrEnum("Perceptual", ["vgg19", "pyramid_l1_ssim"])     # lit_models.common.perceptual.BACKENDS
TPSBackbone = StrEnum("TPSBackbone", ["resnet18", "conv"])


@dataclass
class MTIAConfig:
    """MTIA keypoint detector (official ``mtia_kp_detector.MODEL``): HRNet stem + TokenPose transformer."""
    dim: int = 192                       # DIM
    depth: int = 12                      # TRANSFORMER_DEPTH
    heads: int = 8                       # TRANSFORMER_HEADS
    mlp_ratio: int = 3                   # TRANSFORMER_MLP_RATIO
    patch_size: int = 4                  # PATCH_SIZE
    stem_channels: int = 64              # hard-coded in the official HRNET_base
    stem_blocks: int = 4                 # hard-coded (layer1 bottlenecks)
    stage2_channels: list[int] = field(default_factory=lambda: [32, 64])
    stage2_blocks: list[int] = field(default_factory=lambda: [4, 4])
    stage2_modules: int = 1
    stage3_channels: list[int] = field(default_factory=lambda: [32, 64, 128])   # [0] = BASE_CHANNEL
    stage3_blocks: list[int] = field(default_factory=lambda: [4, 4, 4])
    stage3_modules: int = 4


@dataclass
class DenseMotionConfig:
    """Prior dense-motion network (official ``dense_motion``)."""
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25           # prior flow / correlation resolution = resolution × this (official 1/4)
    kp_variance: float = 0.01


@dataclass
class GeneratorConfig:
    """Occlusion-aware generator (official ``raft_flow.generator``); scales S = num_up_blocks + 1."""
    block_expansion: int = 64
    max_features: int = 512
    num_up_blocks: int = 5


@dataclass
class StructureEncoderConfig:
    """Driving / source structure encoders (official ``raft_flow.driving_encoder`` / ``source_encoder``)."""
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 5


@dataclass
class RefinerConfig:
    """Correlation volume and update block (``raft_flow.dim``; the widths are hard-coded officially: 128 / 192)."""
    corr_dim: int = 256                  # raft_flow.dim
    corr_levels: int = 2
    corr_radius: int = 3
    motion_channels: int = 128           # corr_enc / refine width
    context_channels: int = 192          # to_context output
    kp_variance: float = 0.1             # structure heatmaps


@dataclass
class FOMMKPConfig:
    """``prior=fomm``/``tps`` keypoint detector sizes (lit_models.common; not the official default)."""
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    temperature: float = 0.1
    tps_backbone: TPSBackbone = TPSBackbone.resnet18  # tps: resnet18 (TPSMM) | conv


@dataclass
class MRFAAdamConfig(AdamConfig):
    """The official optimizer: Adam, lr 2e-4, betas (0.5, 0.999). ``fused``: torch's fused Adam kernel (the same
    update as the official foreach Adam up to float rounding, ~1e-7; measured in docs/RESULTS.md,
    benchmarks/mrfa.py); null = torch's default implementation."""

    betas: Optional[list[float]] = field(default_factory=lambda: [0.5, 0.999])
    fused: Optional[bool] = True


@model_schema("mrfa")
@dataclass
class MRFAConfig(ModelConfig):
    _target_: str = "lit_models.mrfa.MRFA"
    name: str = "mrfa"
    resolution: int = 256
    num_channels: int = 3
    optimizer: MRFAAdamConfig = field(default_factory=lambda: MRFAAdamConfig())
    # MultiStepLR (official: ×0.1 at epochs 60 and 90, given here in optimizer steps); no milestones: constant lr
    scheduler: Optional[MultiStepLRConfig] = field(default_factory=lambda: MultiStepLRConfig())
    gradient_clip_val: float = 10.0       # official clip_grad: true, clip: 10 (grad-norm clipping)

    # ---- prior motion ----
    prior: Prior = Prior.mtia                # mtia (official default) | fomm | tps
    num_kp: int = 10
    use_jacobian: bool = True
    points_per_tps: int = 5
    norm: Norm = Norm.batch                  # official: batch; group | instance | none replace every BatchNorm2d
    use_bg_motion: bool = False          # background affine (official celebvhq / TPSMM)
    mtia: MTIAConfig = field(default_factory=MTIAConfig)
    kp: FOMMKPConfig = field(default_factory=FOMMKPConfig)
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)

    # ---- refinement + generator ----
    refine_iters: int = 6                # K; 0 = official prior_only
    # official (K coarsest scales) | spread (see lit_models/mrfa/raft.py)
    refine_schedule: RefineSchedule = RefineSchedule.official
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    driving_encoder: StructureEncoderConfig = field(default_factory=StructureEncoderConfig)
    source_encoder: StructureEncoderConfig = field(default_factory=StructureEncoderConfig)

    # ---- losses (official vox1: perceptual [10]*5 over scales [1, .5, .25, .125], equivariance 10 / 10) ----
    # vgg19 (needs ImageNet weights) | pyramid_l1_ssim (named offline stand-in)
    perceptual: Perceptual = Perceptual.vgg19
    vgg_weights: Optional[str] = None
    perceptual_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    perceptual_layer_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 10.0, 10.0, 10.0])
    lambda_perceptual: float = 1.0
    lambda_equivariance_value: float = 10.0
    lambda_equivariance_jacobian: float = 10.0
    lambda_bg: float = 0.0               # needs use_bg_motion (official: 10)
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5

    # ---- speed / memory (identical outputs; measured in docs/RESULTS.md, benchmarks/mrfa.py) ----
    # activation checkpointing: recompute in backward instead of storing activations (less memory, more time;
    # exact: BatchNorm uses batch statistics in training and its running statistics are not updated twice)
    checkpoint_refiner: bool = False     # each refinement step (correlation lookup, corr_enc, to_context, refine)
    checkpoint_kp_detector: bool = False  # the prior's keypoint detector (3 passes: source, driving, equivariance)
    checkpoint_generator: bool = False   # the generator's encoder and decoder

    # ---- schedule / inference ----
    animate_chunk: int = 16
    # cross-identity evaluation (official animate_ddp.py with config/vox1.yaml animate_params): relative keypoints and
    # jacobians w.r.t. the driving clip's first frame, no movement-scale adaptation (demo.py's --adapt_scale is off
    # there)
    cross_relative: bool = True
    cross_adapt_movement_scale: bool = False
