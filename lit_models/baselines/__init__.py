"""Reference baselines every reenactment table starts from."""
from lit_models.baselines.copy_source import CopySource
from lit_models.baselines.direct import DirectRegression

__all__ = ["CopySource", "DirectRegression"]
