"""MRFA — Learning Motion Refinement for Unsupervised Face Animation (Tao et al., NeurIPS 2023), as a
LightningModule that *is* the official network (JialeTao/MRFA @ 20f935f; numerically checked against the official
golden tensors in tests/lit_models/test_mrfa_official.py). The forward pass follows the paper's Fig. 2:

1. prior motion: MTIA keypoints ``p^S, p^D`` with Jacobians ``J`` (``mtia.py``; or ``prior=fomm|tps``) →
   dense-motion network → coarse backward flow ``T̂_{S<-D}`` and occlusion logit ``Ô`` (``lit_models.common``);
2. structure correlation volume ``C`` from keypoint-structure features of S and D (``raft.py``);
3. K refinement steps, coarse to fine over the generator scales (``raft.py``, mapping of K documented there);
4. the occlusion-aware generator decodes the refined-warped and prior-warped source features (``blocks.py``).

``refine_iters = 0`` is the official ``prior_only`` model (no structure encoders, no refiner are built).
Losses (``loss_<name>`` weighted by ``lambda_<name>``, 0 skips the computation): ``perceptual`` (multi-scale
VGG-19 as the official code, or the named ``pyramid_l1_ssim`` stand-in), ``equivariance_value``,
``equivariance_jacobian``, ``bg`` (``losses.py``). Gradients of the prior (``encoder``, ``dense_motion``,
``bg_predictor``) are clipped to ∞-norm ``gradient_clip_val`` (official ``clip: 10``).
"""
from __future__ import annotations

import numpy as np
import torch

from lit_models.base import AnimationModule
from lit_models.common.dense_motion import BGMotionPredictor, DenseMotionNetwork
from lit_models.common.hourglass import replace_batchnorm
from lit_models.common.keypoints import KPDetector, TPSKPDetector
from lit_models.common.perceptual import MultiScalePerceptualLoss
from lit_models.common.warp import AntiAliasInterpolation2d
from lit_models.mrfa.blocks import checkpointed
from lit_models.mrfa.config import Prior
from lit_models.mrfa.losses import bg_loss, equivariance_losses
from lit_models.mrfa.mtia import MTIAKeypointDetector
from lit_models.mrfa.raft import RaftFlow
from lit_models.optim import MULTISTEP_TARGET
from toolbox.choices import as_choice


def relative_keypoints(kp_source: dict, kp_driving: dict, kp_driving_initial: dict,
                       adapt_movement_scale: bool = False) -> dict:
    """FOMM's relative motion transfer: ``p = p^S + (p^D_t - p^D_1)·s``, ``J = J^D_t (J^D_1)^{-1} J^S``;
    ``s`` = sqrt(hull area of p^S / hull area of p^D_1) when ``adapt_movement_scale`` (else 1)."""
    scale = torch.ones(kp_source["value"].shape[0], 1, 1, device=kp_source["value"].device)
    if adapt_movement_scale:
        from scipy.spatial import ConvexHull

        def area(p):
            return ConvexHull(p.detach().cpu().double().numpy()).volume

        scale = torch.tensor([np.sqrt(area(a)) / np.sqrt(area(b)) for a, b in
                              zip(kp_source["value"], kp_driving_initial["value"])], dtype=torch.float32,
                             device=scale.device).view(-1, 1, 1)
    out = {"value": kp_source["value"] + (kp_driving["value"] - kp_driving_initial["value"]) * scale.to(kp_source["value"].dtype)}
    if "jacobian" in kp_driving and "jacobian" in kp_source:
        out["jacobian"] = (kp_driving["jacobian"].float() @ torch.inverse(kp_driving_initial["jacobian"].float())
                           @ kp_source["jacobian"].float())
    return out


def clip_grad_inf_norm_(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=inf)`` with the same result, ~6× faster on
    CPU: the ∞-norm is a max (order-free, exact), read per tensor with one ``aminmax`` pass (``max(|g|) =
    max(max g, -min g)``) instead of ``vector_norm``; the gradients are scaled by ``max_norm / (norm + 1e-6)`` only
    when that is < 1 (torch multiplies by the clamped 1.0 otherwise, which changes nothing)."""
    grads = [p.grad for p in parameters if p.grad is not None and p.grad.numel()]
    if not grads:
        return torch.tensor(0.0)
    norms = []
    for g in grads:
        lo, hi = torch.aminmax(g)
        norms.append(torch.maximum(hi, -lo))
    total = torch.stack([n.to(norms[0].device) for n in norms]).max()
    coef = max_norm / (total + 1e-6)
    if not bool(coef >= 1.0):   # NaN norm: scaled by NaN, as torch does
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return total


class MRFA(AnimationModule):
    """The official MRFA network as a LightningModule. Sub-module names are the official ones (``encoder``,
    ``dense_motion``, ``decoder``, ``down``), so ``state_dict()`` keys equal an official checkpoint's keys without
    ``module.`` and without the loss-only ``vgg.*`` / ``pyramid.*`` (``lit_models.mrfa.import_official``)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        c = self.cfg
        prior = as_choice(Prior, c.prior, "model.prior")
        if c.lambda_bg > 0 and not c.use_bg_motion:
            raise ValueError("model.lambda_bg > 0 needs model.use_bg_motion=true (the background-motion predictor)")
        if prior == "mtia":
            m = c.mtia
            self.encoder = MTIAKeypointDetector(
                c.resolution, num_kp=c.num_kp, dim=m.dim, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio,
                patch_size=m.patch_size, stem_channels=m.stem_channels, stem_blocks=m.stem_blocks,
                stage2_channels=list(m.stage2_channels), stage2_blocks=list(m.stage2_blocks),
                stage2_modules=m.stage2_modules, stage3_channels=list(m.stage3_channels),
                stage3_blocks=list(m.stage3_blocks), stage3_modules=m.stage3_modules,
                estimate_jacobian=c.use_jacobian)
        elif prior == "fomm":
            k = c.kp
            self.encoder = KPDetector(num_kp=c.num_kp, num_channels=c.num_channels, block_expansion=k.block_expansion,
                                      max_features=k.max_features, num_blocks=k.num_blocks,
                                      temperature=k.temperature, scale_factor=k.scale_factor,
                                      estimate_jacobian=c.use_jacobian, norm=c.norm)
        else:
            k = c.kp
            self.encoder = TPSKPDetector(num_tps=c.num_kp, points_per_tps=c.points_per_tps,
                                         num_channels=c.num_channels, backbone=k.tps_backbone,
                                         block_expansion=k.block_expansion, num_blocks=4, norm=c.norm)
        d = c.dense_motion
        # mtia / fomm keypoints carry Jacobians: FOMM's first-order sparse motions in the official code's
        # convention; tps: TPSMM's motions in lit_models.common's (align_corners=True) convention
        self.dense_motion = DenseMotionNetwork(prior="tps" if c.prior == "tps" else "fomm", num_kp=c.num_kp,
                                               points_per_tps=c.points_per_tps, num_channels=c.num_channels,
                                               block_expansion=d.block_expansion, num_blocks=d.num_blocks,
                                               max_features=d.max_features, scale_factor=d.scale_factor,
                                               kp_variance=d.kp_variance, norm=c.norm if c.prior == "tps" else "batch",
                                               align_corners=c.prior == "tps")
        self.bg_predictor = BGMotionPredictor(num_channels=c.num_channels, norm=c.norm) if c.use_bg_motion else None
        r = c.refiner
        self.decoder = RaftFlow(size=c.resolution, num_kp=c.num_kp, generator=dict(num_channels=c.num_channels, **c.generator),
                                driving_encoder=dict(c.driving_encoder), source_encoder=dict(c.source_encoder),
                                refine_iters=c.refine_iters, schedule=c.refine_schedule, corr_dim=r.corr_dim,
                                corr_levels=r.corr_levels, corr_radius=r.corr_radius,
                                motion_channels=r.motion_channels, context_channels=r.context_channels,
                                basic_scale=d.scale_factor, kp_variance=r.kp_variance)
        self.decoder.checkpoint = bool(c.checkpoint_refiner)
        self.decoder.checkpoint_generator = bool(c.checkpoint_generator)
        self.down = AntiAliasInterpolation2d(c.num_channels, d.scale_factor)
        if c.norm != "batch":   # the official blocks (MTIA stem, dense motion, refiner) hard-code BatchNorm
            replace_batchnorm(self, c.norm)
        self._perceptual: list = []   # built lazily, kept out of the state dict (frozen, external weights)

    @property
    def kp_detector(self):
        """The prior's keypoint detector (``encoder`` in the official naming)."""
        return self.encoder

    @property
    def refiner(self):
        """The refinement part of ``decoder`` (None for K = 0, the prior-only model)."""
        return None if self.decoder.prior_only else self.decoder

    def _kp(self, x: torch.Tensor) -> dict:
        """The prior's keypoints of ``x`` for the training losses (recomputed in backward when
        ``checkpoint_kp_detector``)."""
        if self.cfg.checkpoint_kp_detector and torch.is_grad_enabled():
            return checkpointed(self.encoder, self.encoder, x)
        return self.encoder(x)

    # ---- the paper's forward pass ----------------------------------------------------------------------------
    def generate(self, source: torch.Tensor, kp_source: dict, kp_driving: dict, bg_param=None,
                 trace: dict | None = None, refine_iters: int | None = None) -> dict:
        """One driven frame per source (B×3×H×W each), the official eval forward. Returns ``prediction``, the prior
        motion (``prior_deformation`` grid, ``prior_occlusion``) and the refined one at the finest scale
        (``deformation`` grid, ``occlusion``); ``trace`` collects the official intermediates."""
        dm = self.dense_motion(source, kp_source=kp_source, kp_driving=kp_driving, bg_param=bg_param)
        if trace is not None:
            trace.update({f"dense_motion.{k}": v for k, v in dm.items()})
        img_down = self.down(source)
        kp_s, kp_d = kp_source["value"], kp_driving["value"]
        if self.cfg.prior == "tps":
            kp_s = kp_s.view(kp_s.shape[0], -1, self.cfg.points_per_tps, 2).mean(2)
            kp_d = kp_d.view(kp_d.shape[0], -1, self.cfg.points_per_tps, 2).mean(2)
        out = self.decoder(kp_s, kp_d, dm, img=img_down, img_full=source, trace=trace,
                           refine_iters=refine_iters)
        return {"prediction": out["prediction"], "prior_deformation": dm["deformation"],
                "prior_occlusion": torch.sigmoid(dm["occlusion_logit"]), "deformation": out["refined_grid"],
                "occlusion": out["occlusion"], "warp_img": out["warp_img"],
                "num_refine_steps": len(self.decoder.refined)}

    # ---- contract ---------------------------------------------------------------------------------------------
    def cross_identity_animate_kwargs(self) -> dict:
        """What the official cross-identity evaluation (``animate_ddp.py``, ``animate_params``) sets: relative
        motion (``use_relative_movement`` / ``use_relative_jacobian``) and ``adapt_movement_scale``."""
        return {"relative": bool(self.cfg.cross_relative),
                "adapt_movement_scale": bool(self.cfg.cross_adapt_movement_scale)}

    @torch.no_grad()
    def animate(self, source: torch.Tensor, driving: torch.Tensor, relative: bool = False,
                driving_initial: torch.Tensor | None = None, adapt_movement_scale: bool = False,
                refine_iters: int | None = None) -> torch.Tensor:
        """source B×3×H×W, driving B×T×3×H×W in [0, 1] → B×T×3×H×W.

        ``relative=True``: FOMM's relative motion transfer, ``p = p^S + (p^D_t - p^D_init)``, where the initial
        pose is ``driving_initial`` (B×3×H×W; callers animating a long clip in chunks pass the clip's first frame)
        or else ``driving[:, 0]``. Otherwise absolute keypoints (what self-reenactment evaluation uses).
        ``refine_iters``: run only the first K' ≤ K built refinement steps (0 = the prior-only path)."""
        B, T = driving.shape[:2]
        kp_s = self.kp_detector(source)
        if relative:
            init = driving[:, 0] if driving_initial is None else driving_initial.reshape(-1, *driving.shape[2:])
            kp_d0 = self.kp_detector(init.expand(B, -1, -1, -1) if init.shape[0] == 1 else init)
        chunk = max(1, self.cfg.animate_chunk // B)
        outs = []
        for t0 in range(0, T, chunk):
            drv = driving[:, t0:t0 + chunk]
            n = drv.shape[1]
            drv = drv.flatten(0, 1)

            def rep(x):
                return x.repeat_interleave(n, 0)

            kp_src = {k: rep(v) for k, v in kp_s.items()}
            kp_d = self.kp_detector(drv)
            if relative:
                kp_d = relative_keypoints(kp_src, kp_d, {k: rep(v) for k, v in kp_d0.items()}, adapt_movement_scale)
            src = rep(source)
            bg = self.bg_predictor(src, drv) if self.bg_predictor is not None else None
            pred = self.generate(src, kp_src, kp_d, bg, refine_iters=refine_iters)
            outs.append(pred["prediction"].view(B, n, *pred["prediction"].shape[1:]))
        return torch.cat(outs, 1)

    @property
    def perceptual_loss(self) -> MultiScalePerceptualLoss:
        if not self._perceptual:
            c = self.cfg
            # the official ImagePyramide: each level through FOMM's AntiAliasInterpolation2d (Gaussian + nearest)
            self._perceptual.append(MultiScalePerceptualLoss(
                c.perceptual, c.perceptual_scales, c.perceptual_layer_weights, c.vgg_weights,
                pyramid=lambda s: AntiAliasInterpolation2d(c.num_channels, s)))
        return self._perceptual[0].to(self.device)

    def on_fit_start(self) -> None:
        if self.use_loss("perceptual"):
            _ = self.perceptual_loss   # fail now (naming the missing VGG file), not after the first batch

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        c = self.cfg
        source, driving = batch["source"], batch["driving"]
        target = batch.get("target", driving)
        T = driving.shape[1]
        drv, tgt = driving.flatten(0, 1), target.flatten(0, 1)
        src = source.repeat_interleave(T, 0)
        kp_s = {k: v.repeat_interleave(T, 0) for k, v in self._kp(source).items()}
        kp_d = self._kp(drv)
        bg = self.bg_predictor(src, drv) if self.bg_predictor is not None else None
        out = self.generate(src, kp_s, kp_d, bg)
        terms: dict[str, torch.Tensor] = {}
        if self.use_loss("perceptual"):
            terms["loss_perceptual"] = self.perceptual_loss(out["prediction"], tgt)
        terms.update(equivariance_losses(
            self._kp, drv, kp_d, use_value=self.use_loss("equivariance_value"),
            use_jacobian=self.use_loss("equivariance_jacobian") and c.prior != "tps" and c.use_jacobian,
            sigma_affine=c.sigma_affine, sigma_tps=c.sigma_tps, points_tps=c.points_tps))
        if bg is not None and self.use_loss("bg"):
            terms["loss_bg"] = bg_loss(self.bg_predictor, src, drv, bg)
        return terms

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Official: ``clip_grad_norm_(…, max_norm=10, norm_type=inf)`` on the prior (encoder, dense motion, bg)
        only; the refiner and generator are not clipped. A trainer-level clip is applied on top if set."""
        if self.cfg.gradient_clip_val and self.cfg.gradient_clip_val > 0:
            for part in (self.encoder, self.dense_motion, self.bg_predictor):
                if part is not None:
                    clip_grad_inf_norm_(part.parameters(), self.cfg.gradient_clip_val)
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def scheduler_is_constant(self, node) -> bool:
        """A MultiStepLR node without milestones keeps the lr constant: no scheduler."""
        return str(node.get("_target_")) == MULTISTEP_TARGET and not node.get("milestones")
