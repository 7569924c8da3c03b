"""Shared reference-conditioned video diffusion core (X-Portrait, X-NeMo and InterAnimate build on it; ImPoster
is a text-to-image personalisation method on a Stable Diffusion backbone of its own, ``lit_models.imposter``).

* ``config``: :class:`DiffusionConfig` (subclass it in a method's ``config.py``), :class:`UNetArch`, :class:`TemporalArch`.
* ``networks``: diffusers builders — spatial U-Net, video U-Net (AnimateDiff temporal layers), ReferenceNet,
  ControlNet, latent codec (pixel / ``AutoencoderKL``), :class:`MissingWeightsError`.
* ``reference_attention``: writer / reader attention processors and the shared :class:`ReferenceBank`.
* ``sampling``: DDPM / DDIM / DPM-Solver++ schedulers, guidance, windowed long-video sampling.
* ``augment``: appearance-only augmentation of the driving input.
* ``module``: :class:`ReferenceVideoDiffusion`, the LightningModule with the two motion hooks.
"""
from lit_models.diffusion.config import DiffusionConfig, TemporalArch, UNetArch
from lit_models.diffusion.networks import MissingWeightsError

__all__ = ["DiffusionConfig", "TemporalArch", "UNetArch", "MissingWeightsError"]
