"""SynthFaces: procedural talking faces I(id, m_t) with exact ground truth (keypoints, hand / face masks) and
cross-identity targets (identity A performing clip B's motion), written as a FOMM-layout H.264 dataset.

``render_dataset(root, SynthConfig)`` writes the dataset; ``render_clip(identity, motion, resolution)`` renders
directly from ``sample_identity(rng)`` / ``sample_motion(rng, T, hand)`` parameters (tests, eval ground truth).
CLI: ``python -m datamodules.synthfaces render ROOT`` and ``python -m datamodules.synthfaces preview OUT.png``.
"""
from .renderer import (HAND_REGIONS, KEYPOINT_NAMES, face_geometry, neutral_motion, pose_affine, render_clip,
                       render_frame, sample_identity, sample_motion)
from .writer import (MANIFEST, VERSION, clip_stem, identity_params, load_meta, motion_params, read_manifest,
                     read_mp4, render_dataset, split_identities, write_mp4)

__all__ = [
    "HAND_REGIONS", "KEYPOINT_NAMES", "MANIFEST", "VERSION", "clip_stem", "face_geometry", "identity_params",
    "load_meta", "motion_params", "neutral_motion", "pose_affine", "read_manifest", "read_mp4", "render_clip",
    "render_dataset", "render_frame", "sample_identity", "sample_motion", "split_identities", "write_mp4",
]
