"""X-Portrait: hierarchical motion control on the shared reference-conditioned video diffusion core.

``ε_θ(z_t, t | h_ref, r_g + r_l)``: the global control ``r_g = C_g(z_t, t, D_t)`` (a diffusers ``ControlNetModel``
on the whole driving frame) and the local control ``r_l = C_l(z_t, t, D_t ⊙ M_t)`` (a second ControlNet on the eye
and mouth patches ``M_t`` located from landmarks) are added to the denoiser's skip (down) and middle features;
appearance from the ReferenceNet; AnimateDiff temporal layers. At training the driving input does not share the
source's appearance (``driving_appearance``: strong appearance augmentation, or another identity's frame showing
the same motion — batch key ``driving_cross``, rendered by SynthFaces with ``data.use_synth_cross_driving``; its
eye / mouth patches then come from ``keypoints_cross``). ``use_local_control=false`` is the paper's ablation.
Official structure (``model=xportrait_official`` + the importer): the ReferenceNet at the current t, AnimateDiff v1
temporal modules, official local patches; see ``import_official``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lit_models.diffusion.augment import appearance_augment
from lit_models.diffusion.module import MotionState, ReferenceVideoDiffusion
from lit_models.diffusion.networks import build_controlnet
from lit_models.xportrait.config import DrivingAppearance, LocalPatchMode
from lit_models.xportrait.local_control import local_patch_masks, official_patch_masks
from lit_models.xportrait.pipeline import XPortraitPipeline
from toolbox.choices import as_choice


def centred_patch_masks(centres: torch.Tensor, size: int, patch_size: float) -> torch.Tensor:
    """N×1×size×size masks of the squares ``[c − s/2, c + s/2)`` (``centres`` N×R×2 in [0, 1] of the frame,
    s = ``patch_size``; pixel i is inside when its centre (i + 0.5) / size is): for integer pixel centres ``c·W``
    at size W these are the official ``[c − W/8, c + W/8)`` slices. A NaN centre gives no patch (official: no face,
    an all −1 local input)."""
    ok = torch.isfinite(centres).all(-1)                                   # N×R
    grid = (torch.arange(size, device=centres.device, dtype=torch.float64) + 0.5) / size
    c = torch.nan_to_num(centres.double(), nan=-10.0)
    half = patch_size / 2
    inx = (grid[None, None] >= c[..., :1] - half) & (grid[None, None] < c[..., :1] + half)      # N×R×size (x)
    iny = (grid[None, None] >= c[..., 1:] - half) & (grid[None, None] < c[..., 1:] + half)
    m = (iny[..., :, None] & inx[..., None, :]) & ok[..., None, None]
    return m.any(1, keepdim=True).float()


class XPortrait(ReferenceVideoDiffusion):
    # the official script samples and decodes under torch.cuda.amp.autocast(dtype=float16) (--use_fp16 defaults on)
    official_precision = "fp16"
    # experiments.animate preprocess=auto: datamodules.preprocess.xportrait (full-frame 512², FAN alignment, patches)
    official_preprocess = "xportrait"

    @torch.no_grad()
    def animate(self, source: torch.Tensor, driving: torch.Tensor, *, generator: Optional[torch.Generator] = None,
                keypoints: Optional[torch.Tensor] = None, patch_centres: Optional[torch.Tensor] = None,
                num_inference_steps: Optional[int] = None, sampler: Optional[str] = None,
                guidance_scale: Optional[float] = None, show_progress: bool = False,
                noise: Optional[torch.Tensor] = None, offsets=None) -> torch.Tensor:
        """The whole clip in one trajectory with the official window schedule (:class:`XPortraitPipeline`).
        ``patch_centres``: B×T×3×2 pixel centres of the official local patches in the driving frames (the official
        preprocessing's), instead of ``keypoints``."""
        was_training = self.training
        self.eval()
        try:
            return XPortraitPipeline(self)(source, driving, keypoints=keypoints, patch_centres=patch_centres,
                                           generator=generator,
                                           num_inference_steps=num_inference_steps, sampler=sampler,
                                           guidance_scale=guidance_scale, show_progress=show_progress, noise=noise,
                                           offsets=offsets)
        finally:
            self.train(was_training)

    def build_motion(self, unet2d: nn.Module) -> None:
        cfg = self.cfg
        channels = tuple(cfg.controlnet_embedding_channels)
        if 2 ** (len(channels) - 1) != self.codec.factor:
            raise ValueError(f"controlnet_embedding_channels {list(channels)} downsample by {2 ** (len(channels) - 1)}, "
                             f"the latent by {self.codec.factor}: give it log2(factor)+1 entries")
        self.global_control = build_controlnet(unet2d, embedding_channels=channels)
        self.local_control = build_controlnet(unet2d, embedding_channels=channels) if cfg.use_local_control else None

    def encode_motion(self, source, driving, keep_motion, generator: Optional[torch.Generator] = None,
                      keypoints=None, patch_centres=None) -> MotionState:
        """``patch_centres`` (B×T×3×2, [0, 1] units of the driving frame, NaN: no face) place the official patches
        exactly where the official preprocessing put them (``datamodules.preprocess.xportrait``); else the patches
        come from ``keypoints`` (normalised landmarks) or the fixed boxes."""
        B, T = driving.shape[:2]
        state = {"control": driving * 2 - 1, "keep_motion": keep_motion[:, None].expand(B, T)}
        if self.local_control is not None:
            kp = None if keypoints is None else keypoints.flatten(0, 1)
            mode = as_choice(LocalPatchMode, self.cfg.local_patch_mode, "model.local_patch_mode")
            if patch_centres is not None:
                masks = centred_patch_masks(patch_centres.flatten(0, 1).to(driving.device).float(),
                                            driving.shape[-1], self.cfg.local_patch_size)
            elif mode == "official":
                masks = official_patch_masks(B * T, driving.shape[-1], kp, self.cfg.fixed_boxes,
                                             self.cfg.local_patch_size, device=driving.device)
            else:
                masks = local_patch_masks(B * T, driving.shape[-1], kp, self.cfg.fixed_boxes, self.cfg.region_margin,
                                          self.cfg.min_region_size, device=driving.device)
            masks = masks.view(B, T, *masks.shape[1:])
            # official: the driving frame inside the patches, −1 (black) outside; box: 0 outside
            outside = -1.0 if mode == "official" or patch_centres is not None else 0.0
            state["local"] = torch.where(masks > 0, driving * 2 - 1, torch.full_like(driving[:, :, :1], outside))
            state["local_mask"] = masks
        return state

    def _control(self, net, image, z_t, t, ehs, keep, scale):
        down, mid = net(z_t, t, encoder_hidden_states=ehs, controlnet_cond=image, conditioning_scale=scale,
                        return_dict=False)
        k = keep.to(z_t.dtype).view(-1, 1, 1, 1)           # a dropped motion condition adds exactly nothing
        return [d * k for d in down], mid * k

    def condition_denoiser(self, rows: MotionState, z_t, t):
        ehs = self.null_context.expand(z_t.shape[0], -1, -1)
        keep = rows["keep_motion"]
        down, mid = self._control(self.global_control, rows["control"], z_t, t, ehs, keep, self.cfg.global_control_scale)
        if self.local_control is not None:
            ldown, lmid = self._control(self.local_control, rows["local"], z_t, t, ehs, keep, self.cfg.local_control_scale)
            down = [a + b for a, b in zip(down, ldown)]
            mid = mid + lmid
        return ehs, down, mid

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        # cross_identity: the control input is another identity's face, so the local patches M_t are placed on its
        # own landmarks (``keypoints_cross``, SynthFaces' exact K_t of driving_cross) when the batch has them
        if self.cfg.driving_appearance == "cross_identity" and "keypoints_cross" in batch:
            batch = dict(batch, keypoints=batch["keypoints_cross"])
        return super().compute_losses(batch)

    def prepare_driving(self, batch, driving, generator):
        mode = as_choice(DrivingAppearance, self.cfg.driving_appearance, "model.driving_appearance")
        if mode == "cross_identity":
            if "driving_cross" not in batch:
                raise KeyError("driving_appearance=cross_identity needs batch['driving_cross'] (B×T×3×H×W: another "
                               "identity showing the same motion; SynthFaces renders it with "
                               "data.use_synth_cross_driving=true); use driving_appearance=augment otherwise")
            return self.to_model(batch["driving_cross"])
        if mode == "augment":
            return appearance_augment(driving, generator, self.cfg.augmentation_strength)
        return driving

