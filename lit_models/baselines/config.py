from __future__ import annotations

from dataclasses import dataclass

from lit_models.base import ModelConfig
from lit_models.registry import model_schema


@model_schema("copy_source")
@dataclass
class CopySourceConfig(ModelConfig):
    """Predicts the source frame for every driving frame: the lower bound of reenactment tables. No parameters."""

    _target_: str = "lit_models.baselines.CopySource"
    name: str = "copy_source"


@model_schema("direct")
@dataclass
class DirectConfig(ModelConfig):
    """A small U-Net regressing the driven frame from concat(source, driving): a naive supervised baseline."""

    _target_: str = "lit_models.baselines.DirectRegression"
    name: str = "direct"
    base_channels: int = 16
    num_down: int = 3
    lambda_l1: float = 1.0
    lambda_pyramid: float = 1.0     # multi-scale L1 on 1/2, 1/4 downsamples
