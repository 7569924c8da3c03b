"""Data: clip discovery, bad-file scanning, identity-disjoint splits, pairs, the video-clip DataModule.

Light to import: ``VideoClipDataModule`` (and Lightning with it) and ``build_datamodule`` (the class that
``data._target_`` names) load on first use.
"""
from __future__ import annotations

__all__ = ["VideoClipDataModule", "build_datamodule"]


def __getattr__(name: str):
    if name == "VideoClipDataModule":
        from datamodules.datamodule import VideoClipDataModule

        return VideoClipDataModule
    if name == "build_datamodule":
        from datamodules.build import build_datamodule

        return build_datamodule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
