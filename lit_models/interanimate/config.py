"""Schema of ``model=interanimate*`` configs (InterAnimate on the shared reference video diffusion core)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from lit_models.diffusion.config import DiffusionConfig
from lit_models.registry import model_schema

# choice fields as StrEnums (see lit_models.diffusion.config)
OrthoTarget = StrEnum("OrthoTarget", ["quantized", "raw"])
IdBackend = StrEnum("IdBackend", ["arcface", "dlib"])   # the keys of lit_models.interanimate.identity.ID_DIMS


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
    # init std of L_s, L_t (learned-query convention, 0.02). Adam moves a weight by ~lr per step whatever the loss
    # weight, so at std 1 the latents barely turn in a CPU-length run (mean |cos| 0.141 → 0.132 in 150 steps at
    # lr 2e-4 for any λ_ortho > 0); at 0.02 the orthogonality term can act within the run.
    latent_init_std: float = 0.02
    use_spatial_interaction: bool = True    # a block after every spatial transformer of the denoiser
    use_temporal_interaction: bool = True   # a block after every temporal motion module (needs temporal.use_temporal)
    use_zero_init: bool = True          # zero W_o: the denoiser starts unchanged
    lambda_ortho: float = 0.01          # ‖X̂X̂ᵀ − I‖²/n² on each latent set; 0 skips it (the ablation axis)
    # X: `quantized` = the quantized latents L̃ every block's attention reads its keys/values from (per row, mean over
    # blocks; the backbone features detached); `raw` = L_s / L_t themselves (near-orthogonal at random init and
    # behind a zero-initialised W_o: no effect on the samples at the full-size init; benchmarks/interanimate_ortho.py)
    ortho_target: OrthoTarget = OrthoTarget.quantized
    # ---- regions: masks from the batch (`masks` hand/face) at training; predicted at animate ----------------
    mask_regions: list[str] = field(default_factory=lambda: ["hand", "face"])
    use_mask_predictor: bool = True     # a small conv head predicting the regions from the driving frame
    lambda_mask: float = 0.1            # BCE of the predictor against the batch masks (when present)
    # ---- motion tokens: a conv guider on (driving frame, region masks) pooled to a g×g grid of tokens ------
    motion_grid: int = 4
    motion_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    # ---- ID preserver ----------------------------------------------------------------------------------------
    use_id_preserver: bool = True
    # arcface (insightface buffalo_l, 512-d) | dlib (offline 128-d face ResNet)
    id_backend: IdBackend = IdBackend.arcface
    num_id_tokens: int = 4
    # Sources smaller than this are upsampled (bicubic) before the face detector; 0 = as given. At the tiny config's
    # 32² dlib finds no SynthFaces face (so training only ever sees the no-identity tokens); upsampled to 128² it
    # finds ~10 of 16 (at ~0.4 s per new image on 2 shared CPU cores; embeddings are cached by image content).
    id_resolution: int = 0
