"""Schema of ``model=interanimate*`` configs (InterAnimate on the shared reference video diffusion core)."""
from __future__ import annotations

from dataclasses import dataclass, field

from lit_models.diffusion.config import DiffusionConfig
from lit_models.registry import model_schema


@model_schema("interanimate")
@dataclass
class InterAnimateConfig(DiffusionConfig):
    """InterAnimate (Lin et al. 2025): region-aware interaction latents for hand–face interaction animation."""

    _target_: str = "lit_models.interanimate.InterAnimate"
    name: str = "interanimate"
    # ---- interaction latents (n spatial, m temporal, width d) -----------------------------------------------
    num_spatial_latents: int = 16       # n: hand/face shape, texture, contact appearance
    num_temporal_latents: int = 8       # m: motion pattern, contact deformation
    latent_dim: int = 64                # d
    interaction_heads: int = 4
    quant_temperature: float = 0.1      # τ of the soft quantization softmax
    use_spatial_interaction: bool = True    # a block after every spatial transformer of the denoiser
    use_temporal_interaction: bool = True   # a block after every temporal motion module (needs temporal.use_temporal)
    use_zero_init: bool = True          # zero W_o: the denoiser starts unchanged
    lambda_ortho: float = 0.01          # ‖L̂L̂ᵀ − I‖² on each latent set; 0 skips it (the ablation axis)
    # ---- regions: masks from the batch (`masks` hand/face) at training; predicted at animate ----------------
    mask_regions: list[str] = field(default_factory=lambda: ["hand", "face"])
    use_mask_predictor: bool = True     # a small conv head predicting the regions from the driving frame
    lambda_mask: float = 0.1            # BCE of the predictor against the batch masks (when present)
    # ---- motion tokens: a conv guider on (driving frame, region masks) pooled to a g×g grid of tokens ------
    motion_grid: int = 4
    motion_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    # ---- ID preserver ----------------------------------------------------------------------------------------
    use_id_preserver: bool = True
    id_backend: str = "arcface"         # arcface (insightface buffalo_l, 512-d) | dlib (offline 128-d face ResNet)
    num_id_tokens: int = 4
