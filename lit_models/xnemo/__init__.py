"""X-NeMo on the shared diffusion core: 1-D motion descriptor → cross-attention tokens."""
from lit_models.xnemo.model import XNeMo

__all__ = ["XNeMo"]
