"""MRFA (NeurIPS 2023): prior motion → structure correlation volume → K-step coarse-to-fine refinement → generator."""
from lit_models.mrfa.module import MRFA, relative_keypoints

__all__ = ["MRFA", "relative_keypoints"]
