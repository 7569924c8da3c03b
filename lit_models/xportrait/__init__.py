"""X-Portrait on the shared diffusion core: global + local (eye / mouth) ControlNets, ReferenceNet, temporal layers."""
from lit_models.xportrait.model import XPortrait

__all__ = ["XPortrait"]
