"""Dataset preparation: ``python -m datamodules.prepare crop SRC DST`` (face crops), ``… shards ROOT OUT``, ``… vox``."""
from datamodules.prepare.crop import CropConfig, crop_clip, crop_dataset, list_clips, plan_clip

__all__ = ["CropConfig", "crop_clip", "crop_dataset", "list_clips", "plan_clip"]
