"""Data: clip discovery, bad-file scanning, identity-disjoint splits, pairs, the video-clip DataModule.

Light to import: ``VideoClipDataModule`` (and Lightning with it) loads on first use.
"""
from __future__ import annotations

__all__ = ["VideoClipDataModule"]


def __getattr__(name: str):
    if name == "VideoClipDataModule":
        from datamodules.datamodule import VideoClipDataModule

        return VideoClipDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
