"""InterAnimate (Lin et al., "InterAnimate: Taming Region-aware Diffusion Model for Realistic Human Interaction
Animation", 2025) on the shared reference video diffusion core (``lit_models.diffusion``).

``ε_θ(z_t, t | h_ref, c_motion, c_id, M)``: the core's video U-Net with a ReferenceNet for appearance; the
cross-attention context is ``[c_motion ; c_id]`` — motion tokens from a conv guider on the driving frame and its
hand/face masks, and the ID preserver's tokens (``identity``); every spatial transformer / temporal motion module is
followed by a region-aware interaction block reading the spatial latents ``L_s`` (n×d) / temporal latents ``L_t``
(m×d), whose update is confined to the hand ∪ face region ``M`` (``interaction``).

Losses: ``λ_diffusion·‖ε − ε_θ‖²`` (core) + ``λ_ortho·(O_s + O_t)`` + ``λ_mask·BCE(mask predictor, batch masks)``,
with ``O = ‖X̂X̂ᵀ − I‖²_F / n²`` on ``X`` = the quantized latents ``L̃`` of each spatial (O_s) / temporal (O_t) block,
averaged over its blocks and rows (``ortho_target=quantized``, default) or ``X`` = ``L_s`` / ``L_t`` themselves
(``ortho_target=raw``, which cannot reach the samples at the full-size initialisation; see
``interaction`` and ``benchmarks/interanimate_ortho.py``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.diffusion.module import ReferenceVideoDiffusion, resize
from lit_models.interanimate.config import IdBackend, OrthoTarget
from lit_models.interanimate.identity import ID_DIMS, IdentityProjector
from lit_models.interanimate.interaction import (InteractionBlock, InteractionContext, _spatial_hook, _temporal_hook,
                                                 channels_of, is_motion_module, is_spatial_transformer,
                                                 mean_abs_cosine, orthogonality_loss)
from toolbox.choices import as_choice


class MotionGuider(nn.Module):
    """c_motion: conv stack on [2D−1 ; masks] → g×g average pool → tokens of the cross-attention width (+ position)."""

    def __init__(self, in_channels: int, channels: list[int], grid: int, token_dim: int):
        super().__init__()
        layers, cin = [], in_channels
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(cin, token_dim)
        self.pos = nn.Parameter(torch.randn(1, grid * grid, token_dim) * 0.02)
        self.null = nn.Parameter(torch.randn(1, grid * grid, token_dim) * 0.02)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        tok = self.proj(self.pool(self.features(x)).flatten(2).transpose(1, 2)) + self.pos
        return torch.where(keep.view(-1, 1, 1), tok, self.null.expand_as(tok))


class MaskPredictor(nn.Module):
    """Hand / face region logits from a driving frame (used when the batch has no masks, e.g. ``animate``)."""

    def __init__(self, num_regions: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 3, padding=2, dilation=2),
                                 nn.SiLU(), nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.SiLU(),
                                 nn.Conv2d(width, num_regions, 1))

    def forward(self, frames01: torch.Tensor) -> torch.Tensor:
        return self.net(frames01 * 2 - 1)


class InterAnimate(ReferenceVideoDiffusion):
    def __init__(self, cfg):
        super().__init__(cfg)
        cfg = self.cfg
        self._pending: dict = {}
        self.last_identity: Optional[dict] = None   # what the last `animate` fed the ID preserver
        self.ctx = InteractionContext()
        d = cfg.latent_dim
        init_std = float(cfg.get("latent_init_std", 1.0))  # checkpoints from before the knob: loaded weights anyway
        self.spatial_latents = nn.Parameter(torch.randn(cfg.num_spatial_latents, d) * init_std)
        self.temporal_latents = nn.Parameter(torch.randn(cfg.num_temporal_latents, d) * init_std)
        self.spatial_blocks, self.temporal_blocks = nn.ModuleDict(), nn.ModuleDict()
        self._spatial_names, self._temporal_names = [], []
        self._hooks = []
        for name, module in self.denoiser.named_modules():
            key = name.replace(".", "_")
            if cfg.use_spatial_interaction and is_spatial_transformer(name, module):
                blk = InteractionBlock(channels_of(module), d, cfg.interaction_heads, cfg.quant_temperature, cfg.use_zero_init)
                self.spatial_blocks[key] = blk
                self._spatial_names.append(name)
                self._hooks.append(module.register_forward_hook(
                    _spatial_hook(name, blk, lambda: self.spatial_latents, self.ctx), with_kwargs=True))
            elif cfg.use_temporal_interaction and self.is_video and is_motion_module(name, module):
                blk = InteractionBlock(channels_of(module), d, cfg.interaction_heads, cfg.quant_temperature, cfg.use_zero_init)
                self.temporal_blocks[key] = blk
                self._temporal_names.append(name)
                self._hooks.append(module.register_forward_hook(
                    _temporal_hook(name, blk, lambda: self.temporal_latents, self.ctx), with_kwargs=True))
        if cfg.use_spatial_interaction and not self.spatial_blocks:
            raise RuntimeError("use_spatial_interaction: the denoiser has no spatial transformer (CrossAttn* blocks)")
        if cfg.use_temporal_interaction and self.is_video and not self.temporal_blocks:
            raise RuntimeError("use_temporal_interaction: the denoiser has no temporal motion modules")

    # ---- core hooks -------------------------------------------------------------------------------------------
    def build_motion(self, unet2d: nn.Module) -> None:
        cfg = self.cfg
        D = int(unet2d.config.cross_attention_dim)
        R = len(cfg.mask_regions)
        self.motion_guider = MotionGuider(3 + R, list(cfg.motion_channels), cfg.motion_grid, D)
        self.mask_predictor = MaskPredictor(R) if cfg.use_mask_predictor else None
        # φ (images → (embedding, found)) is injected by the entry points (`set_identity_encoder`): not a module,
        # not in the checkpoint
        self.id_encoder: Optional[Callable] = None
        self.id_projector: Optional[IdentityProjector] = None
        if cfg.use_id_preserver:
            backend = as_choice(IdBackend, cfg.id_backend, "model.id_backend")
            self.id_projector = IdentityProjector(ID_DIMS[backend], cfg.num_id_tokens, D)

    def region_masks(self, driving: torch.Tensor) -> torch.Tensor:
        """B×T×R×r×r region masks: the batch's (training) or the predictor's probabilities (else all ones)."""
        B, T = driving.shape[:2]
        masks = self._pending.get("masks")
        if masks is not None:
            return masks
        if self.mask_predictor is not None:
            with torch.no_grad():
                return torch.sigmoid(self.mask_predictor(driving.flatten(0, 1))).view(B, T, -1, *driving.shape[-2:])
        return driving.new_ones(B, T, len(self.cfg.mask_regions), *driving.shape[-2:])

    @property
    def identity_encoder_request(self) -> Optional[dict]:
        """What the ID preserver needs injected: ``{"backend": id_backend, "resolution": id_resolution}`` while
        ``use_id_preserver`` and no encoder is set, else None (read by ``eval.faces.attach_identity_encoder``)."""
        if not self.cfg.use_id_preserver or self.id_encoder is not None:
            return None
        return {"backend": str(self.cfg.id_backend), "resolution": int(self.cfg.get("id_resolution", 0))}

    def set_identity_encoder(self, encoder: Callable) -> None:
        """Inject φ: B×3×H×W images in [0, 1] → (embedding B×E with E = ID_DIMS[id_backend], found B bool)."""
        if not self.cfg.use_id_preserver:
            raise ValueError("set_identity_encoder: model.use_id_preserver=false (this model has no ID preserver)")
        self.id_encoder = encoder

    def identity(self, source01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding B×E, found B) of the source face through the injected identity encoder φ."""
        if self.id_encoder is None:
            raise RuntimeError(
                f"InterAnimate has model.use_id_preserver=true (id_backend={self.cfg.id_backend}) but no identity "
                "encoder was injected: call eval.faces.attach_identity_encoder(model) after build_model / load_model "
                "(the experiments entry points do), or model.set_identity_encoder(fn), or set "
                "model.use_id_preserver=false")
        return self.id_encoder(source01)

    def encode_motion(self, source, driving, keep_motion, generator=None, keypoints=None):
        B, T = driving.shape[:2]
        masks = self.region_masks(driving)
        keep_rows = keep_motion[:, None].expand(B, T).reshape(-1)
        x = torch.cat([driving * 2 - 1, masks], dim=2).flatten(0, 1)
        tokens = self.motion_guider(x, keep_rows)
        state = {"keep_motion": keep_motion[:, None].expand(B, T),
                 "motion_tokens": tokens.view(B, T, *tokens.shape[1:]),
                 "region": masks.amax(dim=2, keepdim=True)}
        if self.id_projector is not None:
            emb, found = self._pending.get("id") or self.identity(source)
            idt = self.id_projector(emb.to(driving.device), found.to(driving.device))
            state["id_tokens"] = idt[:, None].expand(B, T, -1, -1)
            state["id_found"] = found[:, None].expand(B, T)
        return state

    def condition_denoiser(self, rows, z_t, t):
        self.ctx.mask = rows["region"]
        parts = [rows["motion_tokens"]]
        if "id_tokens" in rows:
            parts.append(rows["id_tokens"])
        return torch.cat(parts, dim=1), None, None

    # ---- training ---------------------------------------------------------------------------------------------
    def batch_masks(self, batch: dict) -> Optional[torch.Tensor]:
        """batch["masks"] {"hand","face"} B×T×1×H×W → B×T×R×r×r at model resolution (None when absent)."""
        masks = batch.get("masks")
        if not masks:
            return None
        missing = [k for k in self.cfg.mask_regions if k not in masks]
        if missing:
            raise KeyError(f"batch masks lack region(s) {missing} (have {sorted(masks)})")
        m = torch.cat([masks[k].float() for k in self.cfg.mask_regions], dim=2)
        B, T = m.shape[:2]
        return resize(m.flatten(0, 1), self.cfg.resolution).view(B, T, -1, self.cfg.resolution, self.cfg.resolution)

    @property
    def ortho_target(self) -> OrthoTarget:
        # checkpoints from before the knob: quantized
        return as_choice(OrthoTarget, self.cfg.get("ortho_target", "quantized"), "model.ortho_target")

    def latent_terms(self) -> dict[str, torch.Tensor]:
        """``loss_ortho`` = O_s + O_t (module docstring); quantized: from the terms the blocks recorded in the forward."""
        terms = {}
        if not self.use_loss("ortho"):
            return terms
        loss = torch.zeros((), device=self.spatial_latents.device)
        if self.ortho_target == "raw":
            if self.spatial_blocks:
                loss = loss + orthogonality_loss(self.spatial_latents)
            if self.temporal_blocks:
                loss = loss + orthogonality_loss(self.temporal_latents)
        else:
            for names in (self._spatial_names, self._temporal_names):
                parts = [self.ctx.ortho_terms[n] for n in names if n in (self.ctx.ortho_terms or {})]
                if parts:
                    loss = loss + torch.stack(parts).mean()
        terms["loss_ortho"] = loss
        return terms

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        masks = self.batch_masks(batch)
        self._pending = {"masks": masks}
        if self.id_projector is not None:
            self._pending["id"] = self.identity(batch["source"])
        # ctx.ortho stays set after this call: a gradient checkpoint's recomputation (in backward) repeats the terms
        self.ctx.ortho = self.use_loss("ortho") and self.ortho_target == "quantized"
        self.ctx.ortho_terms = {}
        try:
            terms = super().compute_losses(batch)
            terms.update(self.latent_terms())
        finally:
            # ctx.mask is kept too (until the next denoiser call sets it): the recomputation needs the same regions
            self._pending = {}
            self.ctx.ortho_terms = None
        if self.use_loss("mask") and self.mask_predictor is not None and masks is not None:
            drv = self.to_model(batch["driving"]).flatten(0, 1)
            logits = self.mask_predictor(drv)
            terms["loss_mask"] = F.binary_cross_entropy_with_logits(logits, masks.flatten(0, 1).clamp(0, 1))
        return terms

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log_dict(self.latent_stats(), batch_size=batch["source"].shape[0])
        return loss

    def latent_stats(self) -> dict[str, float]:
        """Mean |cos| between distinct learned latents L (``latent_abs_cos_*``) and between the quantized latents L̃
        attention read in the last denoiser call, averaged over its blocks and rows (``quantized_abs_cos_*``, once
        the denoiser has run): the ortho sweep's latent-correlation columns."""
        out = {}
        for kind, blocks, latents, names in (("spatial", self.spatial_blocks, self.spatial_latents, self._spatial_names),
                                             ("temporal", self.temporal_blocks, self.temporal_latents,
                                              self._temporal_names)):
            if not blocks:
                continue
            out[f"latent_abs_cos_{kind}"] = mean_abs_cosine(latents)
            seen = [self.ctx.quantized_cos[n] for n in names if n in self.ctx.quantized_cos]
            if seen:
                out[f"quantized_abs_cos_{kind}"] = float(torch.stack(seen).mean())
        return out

    # ---- sampling ---------------------------------------------------------------------------------------------
    def animate(self, source: torch.Tensor, driving: torch.Tensor, masks: Optional[dict] = None,
                identity_source: Optional[torch.Tensor] = None,
                identity: Optional[tuple[torch.Tensor, torch.Tensor]] = None, **kw) -> torch.Tensor:
        """As the core's ``animate``; ``masks`` ({"hand","face"} B×T×1×H×W) replace the predicted regions.

        ID preserver input, first given wins: ``identity`` = a precomputed (embedding B×E, found B); else
        ``identity_source`` = the source at any (higher) resolution, B×3×h×w in [0, 1] — the face detector needs
        far more than a tiny model's 32² (``experiments.animate`` passes the full-resolution source crop); else
        ``source`` itself. ``self.last_identity`` keeps what was used (embedding, found, the image size it came from).
        """
        self._pending = {"masks": self.batch_masks({"masks": masks}) if masks else None}
        if self.id_projector is not None:
            size = None
            if identity is None:
                id_img = identity_source if identity_source is not None else source
                if id_img.shape[0] != source.shape[0]:
                    raise ValueError(f"identity_source has {id_img.shape[0]} images for {source.shape[0]} sources")
                identity, size = self.identity(id_img), tuple(id_img.shape[-2:])
            emb, found = identity
            self._pending["id"] = (emb, found)
            self.last_identity = {"embedding": emb.detach().cpu(), "found": found.detach().cpu(), "size": size}
        try:
            return super().animate(source, driving, **kw)
        finally:
            self._pending = {}
            self.ctx.mask = None
