"""InterAnimate: region-aware interaction latents, orthogonality loss and an ID preserver on the diffusion core."""
from lit_models.interanimate.model import InterAnimate

__all__ = ["InterAnimate"]
