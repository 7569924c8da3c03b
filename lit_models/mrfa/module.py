"""MRFA — Learning Motion Refinement for Unsupervised Face Animation (Tao et al., NeurIPS 2023), as a
LightningModule. The forward pass follows the paper's Fig. 2:

1. prior motion: keypoints ``p^S, p^D`` (FOMM, with Jacobians ``J``; or TPSMM's TPS keypoints) → dense-motion
   network → coarse flow ``T̂_{S<-D}`` and occlusion ``Ô`` (``lit_models.common``);
2. structure correlation volume ``C`` from keypoint-structure features of S and D (``structure.py``);
3. K refinement steps, coarse to fine over the generator scales (``refine.py``, mapping of K documented there);
4. the generator warps its source features with the prior and the refined motions and decodes ``D̂``
   (``generator.py``).

``refine_iters = 0`` is exactly the prior-only model (no refiner, no fusion layers are built or called).
Losses (``loss_<name>`` weighted by ``lambda_<name>``, 0 skips the computation): ``perceptual`` (multi-scale,
VGG-19 or the named ``pyramid_l1_ssim`` stand-in), ``prior_perceptual`` (same on the prior-only output, K > 0),
``equivariance_value``, ``equivariance_jacobian``, ``bg`` (``losses.py``).
"""
from __future__ import annotations

import numpy as np
import torch

from lit_models.base import AnimationModule
from lit_models.common.dense_motion import BGMotionPredictor, DenseMotionNetwork
from lit_models.common.keypoints import KPDetector, TPSKPDetector
from lit_models.common.perceptual import MultiScalePerceptualLoss
from lit_models.common.warp import resize_grid, resize_map, warp
from lit_models.mrfa.generator import Generator
from lit_models.mrfa.losses import bg_loss, equivariance_losses
from lit_models.mrfa.refine import MotionRefiner, refine_schedule


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
        out["jacobian"] = kp_driving["jacobian"] @ torch.inverse(kp_driving_initial["jacobian"]) @ kp_source["jacobian"]
    return out


class MRFA(AnimationModule):
    def __init__(self, cfg):
        super().__init__(cfg)
        c = self.cfg
        if c.prior not in ("fomm", "tps"):
            raise ValueError(f"model.prior must be fomm or tps, got {c.prior!r}")
        if c.lambda_bg > 0 and not c.use_bg_motion:
            raise ValueError("model.lambda_bg > 0 needs model.use_bg_motion=true (the background-motion predictor)")
        if c.prior == "fomm":
            self.kp_detector = KPDetector(c.num_kp, c.num_channels, c.kp_block_expansion, c.kp_max_features,
                                          c.kp_num_blocks, c.kp_temperature, c.kp_scale_factor, c.use_jacobian, c.norm)
            num_points = c.num_kp
        else:
            self.kp_detector = TPSKPDetector(c.num_kp, c.points_per_tps, c.num_channels, c.tps_backbone,
                                             c.kp_block_expansion, 4, c.norm)
            num_points = c.num_kp * c.points_per_tps
        self.dense_motion = DenseMotionNetwork(c.prior, c.num_kp, c.points_per_tps, c.num_channels,
                                               c.dm_block_expansion, c.dm_num_blocks, c.dm_max_features,
                                               c.dm_scale_factor, c.kp_variance, True, c.norm)
        self.bg_predictor = BGMotionPredictor(c.num_channels, norm=c.norm) if c.use_bg_motion else None
        self.generator = Generator(c.num_channels, c.gen_block_expansion, c.gen_max_features, c.gen_num_down_blocks,
                                   c.gen_num_bottleneck_blocks, c.norm, use_refined=c.refine_iters > 0)
        self.refiner = None
        if c.refine_iters > 0:
            self.refiner = MotionRefiner(
                num_points, c.num_channels, c.resolution, self.generator.scale_channels, corr_scale=c.corr_scale,
                corr_dim=c.corr_dim, corr_levels=c.corr_levels, corr_radius=c.corr_radius,
                struct_kp_variance=c.struct_kp_variance, struct_block_expansion=c.struct_block_expansion,
                struct_num_blocks=c.struct_num_blocks, struct_max_features=c.struct_max_features,
                refine_channels=c.refine_channels, context_channels=c.context_channels, norm=c.norm)
        self._perceptual: list = []   # built lazily, kept out of the state dict (frozen, external weights)

    # ---- the paper's forward pass ----------------------------------------------------------------------------
    def schedule(self, refine_iters: int | None = None) -> list[int]:
        k = self.cfg.refine_iters if refine_iters is None else refine_iters
        if k > 0 and self.refiner is None:
            raise ValueError("this model was built with refine_iters=0: it has no refiner to run")
        return refine_schedule(k, self.generator.num_scales, self.cfg.refine_schedule)

    def generate(self, source: torch.Tensor, kp_source: dict, kp_driving: dict, bg_param=None, feats=None,
                 refine_iters: int | None = None, return_prior: bool = False) -> dict:
        """One driven frame per source (B×3×H×W each). Returns ``prediction`` and the motions."""
        steps = self.schedule(refine_iters)
        dm = self.dense_motion(source, kp_source, kp_driving, bg_param)
        feats = self.generator.encode(source) if feats is None else feats
        S = len(feats)
        prior_grid, prior_logit = dm["deformation"], dm["occlusion_logit"]
        corr = dgrid = docc = None
        warped, warped_prior = [None] * S, [None] * S
        for j in range(S):                                   # coarse → fine
            level = S - 1 - j
            f = feats[level]
            size = f.shape[-2:]
            g_p, l_p = resize_grid(prior_grid, size), resize_map(prior_logit, size)
            if dgrid is not None:
                dgrid, docc = resize_grid(dgrid, size), resize_map(docc, size)
            for _ in range(steps[j]):
                if corr is None:
                    corr = self.refiner.correlation(source, kp_source["value"], kp_driving["value"])
                g = g_p if dgrid is None else g_p + dgrid
                lg = l_p if docc is None else l_p + docc
                dg, do = self.refiner.step(j, corr, g, lg, f)
                dgrid, docc = (dg, do) if dgrid is None else (dgrid + dg, docc + do)
            prior = (g_p, torch.sigmoid(l_p))
            refined = None if dgrid is None else (g_p + dgrid, torch.sigmoid(l_p + docc))
            warped[level] = self.generator.warp_scale(level, f, prior, refined)
            if return_prior:
                warped_prior[level] = warped[level] if refined is None else self.generator.warp_scale(level, f, prior)
        # finest-scale motion: the refined one when refinement ran, else the prior (g_p, l_p are at the finest scale)
        if dgrid is not None:
            grid_f, occ_f = g_p + dgrid, torch.sigmoid(l_p + docc)
        else:
            grid_f, occ_f = g_p, torch.sigmoid(l_p)
        out = {"prediction": self._blend(source, self.generator.decode(warped), grid_f, occ_f),
               "prior_deformation": prior_grid, "prior_occlusion": dm["occlusion"], "num_refine_steps": sum(steps),
               "deformation": grid_f, "occlusion": occ_f}
        if return_prior:
            out["prior_prediction"] = out["prediction"] if dgrid is None else self._blend(
                source, self.generator.decode(warped_prior), g_p, torch.sigmoid(l_p))
        return out

    def _blend(self, source, generated, grid, occ):
        """TPSMM/MRFA output: ``D̂ = Ô ⊙ W(S, T) + (1 - Ô) ⊙ G`` (visible pixels come from the warped source,
        occluded ones from the decoder), at the finest scale's motion; off with ``use_source_blend=false``."""
        if not self.cfg.use_source_blend:
            return generated
        return occ * warp(source, grid) + (1 - occ) * generated

    # ---- contract ---------------------------------------------------------------------------------------------
    def eval_diagnostics(self, datamodule, protocol) -> dict[str, float]:
        """Keypoint-motion accuracy of the prior vs the refined motion on the protocol's self-reenactment test set
        when its samples carry ground-truth keypoints (SynthFaces): ``motion_err_zero / _prior / _refined`` and
        ``refine_shift`` in pixels (see ``lit_models.mrfa.diagnostics``); {} otherwise."""
        from lit_models.mrfa.diagnostics import diagnose

        if str(protocol.mode) != "self" or not hasattr(datamodule, "eval_dataset"):
            return {}
        ds = datamodule.eval_dataset(split=protocol.split, mode="self", num_frames=protocol.num_frames,
                                     stride=protocol.stride, max_videos=protocol.max_videos)
        if len(ds) == 0:
            return {}
        first = ds[0]
        if first.get("keypoints") is None:     # real data: no ground-truth keypoints, so nothing to decode further
            return {}

        def stream():                           # one video at a time (the test set is never held in memory)
            for i in range(len(ds)):
                s = first if i == 0 else ds[i]
                if s.get("keypoints") is not None:
                    yield {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in s.items()}

        was_training = self.training
        self.eval()
        try:
            res = diagnose(self, stream(), int(first["source"].shape[-1]))
        finally:
            self.train(was_training)
        return {"motion_err_zero": res["kp_motion_err_zero"], "motion_err_prior": res["kp_motion_err_prior"],
                "motion_err_refined": res["kp_motion_err_refined"], "refine_shift": res["refine_shift"]}

    @torch.no_grad()
    def animate(self, source: torch.Tensor, driving: torch.Tensor, relative: bool = False,
                driving_initial: torch.Tensor | None = None, adapt_movement_scale: bool = False,
                refine_iters: int | None = None) -> torch.Tensor:
        """source B×3×H×W, driving B×T×3×H×W in [0, 1] → B×T×3×H×W.

        ``relative=True``: FOMM's relative motion transfer, ``p = p^S + (p^D_t - p^D_init)``, where the initial
        pose is ``driving_initial`` (B×3×H×W; callers animating a long clip in chunks pass the clip's first frame)
        or else ``driving[:, 0]``. Otherwise absolute keypoints (what self-reenactment evaluation uses).
        ``refine_iters`` overrides K at inference (≤ the trained K makes sense; 0 = the prior-only path)."""
        B, T = driving.shape[:2]
        kp_s = self.kp_detector(source)
        feats = self.generator.encode(source)
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
            pred = self.generate(src, kp_src, kp_d, bg, feats=[rep(f) for f in feats], refine_iters=refine_iters)
            outs.append(pred["prediction"].view(B, n, *pred["prediction"].shape[1:]))
        return torch.cat(outs, 1)

    @property
    def perceptual_loss(self) -> MultiScalePerceptualLoss:
        if not self._perceptual:
            c = self.cfg
            self._perceptual.append(MultiScalePerceptualLoss(c.perceptual, c.perceptual_scales,
                                                             c.perceptual_layer_weights, c.vgg_weights))
        return self._perceptual[0].to(self.device)

    def on_fit_start(self) -> None:
        if self.use_loss("perceptual") or self.use_loss("prior_perceptual"):
            self.perceptual_loss   # fail now (naming the missing VGG file), not after the first batch

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        c = self.cfg
        source, driving = batch["source"], batch["driving"]
        target = batch.get("target", driving)
        T = driving.shape[1]
        drv, tgt = driving.flatten(0, 1), target.flatten(0, 1)
        src = source.repeat_interleave(T, 0)
        kp_s = {k: v.repeat_interleave(T, 0) for k, v in self.kp_detector(source).items()}
        kp_d = self.kp_detector(drv)
        bg = self.bg_predictor(src, drv) if self.bg_predictor is not None else None
        need_prior = self.refiner is not None and c.refine_iters > 0 and self.use_loss("prior_perceptual")
        out = self.generate(src, kp_s, kp_d, bg, return_prior=need_prior)
        terms: dict[str, torch.Tensor] = {}
        if self.use_loss("perceptual"):
            terms["loss_perceptual"] = self.perceptual_loss(out["prediction"], tgt)
        if need_prior:
            terms["loss_prior_perceptual"] = self.perceptual_loss(out["prior_prediction"], tgt)
        terms.update(equivariance_losses(
            self.kp_detector, drv, kp_d, use_value=self.use_loss("equivariance_value"),
            use_jacobian=self.use_loss("equivariance_jacobian") and c.prior == "fomm" and c.use_jacobian,
            sigma_affine=c.sigma_affine, sigma_tps=c.sigma_tps, points_tps=c.points_tps))
        if bg is not None and self.use_loss("bg"):
            terms["loss_bg"] = bg_loss(self.bg_predictor, src, drv, bg)
        return terms

    def configure_optimizers(self):
        opt = super().configure_optimizers()
        if not self.cfg.lr_milestones:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(self.cfg.lr_milestones), self.cfg.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
