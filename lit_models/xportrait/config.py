"""X-Portrait schema (Xie et al., "X-Portrait: Expressive Portrait Animation with Hierarchical Motion Attention").

``model=xportrait`` (SD-1.5-sized) and ``model=xportrait_tiny`` (CPU) are variants of this one schema.
Ablation: ``use_local_control`` (the paper's local-control ablation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from lit_models.diffusion.config import (DiffusionConfig, NormStats, ReferenceTimestep, TemporalArch, UpPlacement,
                                         WindowSchedule)
from lit_models.registry import model_schema

# choice fields as StrEnums (see lit_models.diffusion.config)
LocalPatchMode = StrEnum("LocalPatchMode", ["official", "box"])
LandmarkDetector = StrEnum("LandmarkDetector", ["none", "dlib"])
DrivingAppearance = StrEnum("DrivingAppearance", ["augment", "cross_identity", "none"])


@model_schema("xportrait")
@dataclass
class XPortraitConfig(DiffusionConfig):
    _target_: str = "lit_models.xportrait.XPortrait"
    name: str = "xportrait"
    # ---- official structure (bytedance/X-Portrait, config/cldm_v15_appearance_pose_local_mm.yaml) --------------
    # the appearance (reference) net runs at the denoiser's current timestep t, as the official ``apply_model`` does
    reference_timestep: ReferenceTimestep = ReferenceTimestep.current
    # official sampling windows (DDIMSampler_ReferenceOnly): circular from a random offset per step, ε averaged
    window_schedule: WindowSchedule = WindowSchedule.circular
    # AnimateDiff v1 temporal modules: PE length 24, no mid-block module, the last module of each up block after
    # its Upsample (the official U-Net runs one after every whole ``output_blocks[j]``), GroupNorm per frame
    temporal: TemporalArch = field(default_factory=lambda: TemporalArch(
        max_seq_length=24, use_mid_block=False, up_placement=UpPlacement.after_upsample,
        norm_stats=NormStats.per_frame))
    # ---- global motion control: a ControlNet on the whole driving frame ----------------------------------------
    controlnet_embedding_channels: list[int] = field(default_factory=lambda: [16, 32, 96, 256])  # 2^(len-1) = latent factor
    global_control_scale: float = 1.0
    # ---- local motion control: a second ControlNet on the eye and mouth patches of the driving frame ----------
    use_local_control: bool = True
    local_control_scale: float = 1.0
    # official: 3 squares of side local_patch_size (128² at 512²) centred on the eye / mouth landmark means, −1
    # outside (bytedance/X-Portrait) | box: ours, landmark boxes grown by region_margin, 0 outside
    local_patch_mode: LocalPatchMode = LocalPatchMode.official
    local_patch_size: float = 0.25
    region_margin: float = 0.35          # box: patch = landmark box grown by this fraction of its size (each side)
    min_region_size: float = 0.08        # box: patches are at least this fraction of the image
    # deprecated, ignored (kept so older checkpoints load): landmarks now come with the call (``keypoints``);
    # lit_models runs no face detector
    landmark_detector: LandmarkDetector = LandmarkDetector.none
    # fallback patches (official: their centres) when no landmarks: [x0, y0, x1, y1] in [0, 1] — left eye, right eye,
    # mouth of a centred face
    fixed_boxes: list[list[float]] = field(default_factory=lambda: [
        [0.25, 0.30, 0.47, 0.47], [0.53, 0.30, 0.75, 0.47], [0.30, 0.60, 0.70, 0.82]])
    # ---- appearance leakage: training driving input that does not share the source's appearance ----------------
    # augment (strong appearance augmentation) | cross_identity | none
    driving_appearance: DrivingAppearance = DrivingAppearance.augment
    augmentation_strength: float = 1.0
