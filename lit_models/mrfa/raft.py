"""MRFA's motion refinement and generator wiring (paper Sec. 3.2–3.3; official ``modules/raft.py`` ``RaftFlow``).

Structure correlation volume (Sec. 3.2): keypoint Gaussians (variance 0.1) plus a learned position embedding,
encoded by two Hourglasses (driving: heatmaps only; source: heatmaps + the ¼-size source image) and projected to
``corr_dim`` channels, give ``C = F_D F_S^T / sqrt(corr_dim)`` over all (driving, source) pixel pairs at the prior's
resolution ``size · dense_motion.scale_factor`` (official: size / 4).

Refinement (Sec. 3.3) runs coarse to fine over the S = num_up_blocks + 1 generator scales, starting at
``size / 2^(S-1)``: at a refined scale the flow ``T̃`` (pixels, B×2×h×w) and occlusion logit ``Õ`` read a
(2r+1)² window of the correlation pyramid around ``T̃``, are encoded with the flow (``corr_enc``) and with the
source features warped by ``T̃`` (``to_context``), and ``refine`` predicts ``ΔT, ΔO``. The next scale's flow is the
prior flow resized there plus every previous residual up-sampled (×2 per scale).

Mapping of K = ``refine_iters`` (``schedule``):

* ``official`` (default): refine the K coarsest scales, exactly as the official code with ``num_iter = K``
  (K = S is the released model; K < S is the official fewer-steps variant, whose finer scales up-sample the flow
  and occlusion without refinement — the upsampled flow after the last refined scale is that scale's *input*
  flow, the official behaviour); ``to_context`` then holds K projections, as the official checkpoint would.
* ``spread``: the K refined scales are ``round(linspace(0, S-1, K))`` (coarsest and finest for K = 2); scales in
  between carry the accumulated residuals. Not an official variant.
* K = 0 is the official ``prior_only`` model: no structure encoders, no correlation volume, no refiner; the
  generator decodes features warped by the prior motion only.

Quirks kept for parity (see ``../shared/fixtures/official/mrfa/README.md``): the final image warp uses the input
flow of the finest scale, not its refined flow; the prior-warped features use ``grid_sample``'s
``align_corners=False`` while the refined warps use pixel coordinates with ``align_corners=True``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lit_models.common.hourglass import Hourglass
from lit_models.common.keypoints import kp2gaussian
from lit_models.mrfa.blocks import OcclusionAwareGenerator, bilinear_sampler, checkpointed, coords_grid
from lit_models.mrfa.config import RefineSchedule
from toolbox.choices import as_choice


def refine_scales(num_iters: int, num_scales: int, schedule: str = "official") -> list[int]:
    """Indices (coarse → fine) of the scales that run a refinement step."""
    if not 0 <= num_iters <= num_scales:
        raise ValueError(f"model.refine_iters must be in 0..{num_scales} (one step per generator scale), "
                         f"got {num_iters}")
    if as_choice(RefineSchedule, schedule, "model.refine_schedule") == "official" or num_iters <= 1:
        return list(range(num_iters))
    return sorted({int(i) for i in np.round(np.linspace(0, num_scales - 1, num_iters))})


def _up(x, size=None):
    if size is None:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class CorrBlock:
    """RAFT's correlation pyramid (avg-pooled over the source dims) with a (2r+1)² lookup window. Channel
    ``(2r+1)·a + b`` of a level is the offset (x, y) = (a - r, b - r)."""

    def __init__(self, corr: torch.Tensor, num_levels: int = 2, radius: int = 3):
        self.radius = radius
        self.pyramid = [corr]
        for _ in range(num_levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        r = self.radius
        coords = coords.permute(0, 2, 3, 1)
        b, h, w, _ = coords.shape
        d = torch.linspace(-r, r, 2 * r + 1, device=coords.device, dtype=coords.dtype)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        out = []
        for i, corr in enumerate(self.pyramid):
            lvl = coords.reshape(b * h * w, 1, 1, 2) / 2 ** i + delta
            out.append(bilinear_sampler(corr, lvl).view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


class BasicMotionEncoder(nn.Module):
    """Encodes the correlation lookup and the current flow: widths scale with ``channels`` (official 128:
    convc 128/96, convf 128/64, out 126 + the 2 flow channels)."""

    def __init__(self, num_levels: int = 2, radius: int = 3, channels: int = 128):
        super().__init__()
        c = channels
        self.convc1 = nn.Conv2d(num_levels * (2 * radius + 1) ** 2, c, 1)
        self.convc2 = nn.Conv2d(c, 3 * c // 4, 3, padding=1)
        self.convf1 = nn.Conv2d(2, c, 7, padding=3)
        self.convf2 = nn.Conv2d(c, c // 2, 3, padding=1)
        self.conv = nn.Conv2d(3 * c // 4 + c // 2, c - 2, 3, padding=1)

    def forward(self, flow, corr):
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([cor, flo], 1))), flow], 1)


class RefineFlow(nn.Module):
    """Flow head and occlusion head over [motion features, context]: returns B×3×h×w = (ΔT_x, ΔT_y, ΔO)."""

    def __init__(self, channels: int = 128, context_channels: int = 192):
        super().__init__()
        c = channels
        self.convc1 = nn.Conv2d(context_channels, c, 3, padding=1)
        self.conv1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, 2, 3, padding=1)
        self.convo1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.convo2 = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, m_f, warp_f):
        inp = torch.cat([m_f, F.relu(self.convc1(warp_f))], 1)
        return torch.cat([self.conv2(F.relu(self.conv1(inp))), self.convo2(F.relu(self.convo1(inp)))], 1)


class RaftFlow(nn.Module):
    """Official ``RaftFlow`` with K and the sizes as arguments (key names as in the official checkpoint)."""

    def __init__(self, *, size: int, num_kp: int, generator: dict, driving_encoder: dict, source_encoder: dict,
                 refine_iters: int = 6, schedule: str = "official", corr_dim: int = 256, corr_levels: int = 2,
                 corr_radius: int = 3, motion_channels: int = 128, context_channels: int = 192,
                 basic_scale: float = 0.25, kp_variance: float = 0.1):
        super().__init__()
        self.size, self.kp_variance = size, kp_variance
        self.h = int(size * basic_scale)                      # correlation / prior-flow resolution (official size//4)
        self.generator = OcclusionAwareGenerator(**generator)
        S = self.generator.num_up_blocks + 1
        self.num_scales, self.start = S, size // 2 ** (S - 1)
        if self.start < 2 or self.h % self.start or self.h < self.start:
            raise ValueError(f"model: the coarsest generator scale {size}/2^{S - 1} must be ≥ 2 px and divide the prior "
                             f"resolution {self.h} (resolution × dense_motion.scale_factor); "
                             f"lower model.generator.num_up_blocks or raise model.resolution")
        self.basic_res_index = int(round(math.log2(self.h // self.start)))
        self.refined = refine_scales(refine_iters, S, schedule)
        self.prior_only = not self.refined
        self.corr_levels, self.corr_radius = corr_levels, corr_radius
        if not self.prior_only:
            self.kp = Hourglass(in_features=num_kp, **driving_encoder)
            self.kp_img = Hourglass(in_features=num_kp + 3, **source_encoder)
            self.kp_head = nn.Conv2d(self.kp.out_filters, corr_dim, 1)
            self.kp_img_head = nn.Conv2d(self.kp_img.out_filters, corr_dim, 1)
            self.pos_embedding = nn.Parameter(torch.zeros(1, num_kp, self.h, self.h))
            nn.init.trunc_normal_(self.pos_embedding, std=0.02)
            self.corr_enc = BasicMotionEncoder(corr_levels, corr_radius, motion_channels)
            self.refine = RefineFlow(motion_channels, context_channels)
            ch = self.generator.channels
            self.to_context = nn.ModuleList(nn.Conv2d(ch[i], context_channels, 1)
                                            for i in range(self.refined[-1] + 1))
        self.scale = corr_dim ** -0.5
        self.checkpoint = False             # model.checkpoint_refiner
        self.checkpoint_generator = False   # model.checkpoint_generator

    def _gen(self, name: str, *args):
        """``generator.encode`` / ``generator.decode``, recomputed in backward when ``checkpoint_generator``."""
        fn = getattr(self.generator, name)
        if self.checkpoint_generator and torch.is_grad_enabled():
            return checkpointed(fn, self.generator, *args)
        return fn(*args)

    # ---- prior only (official ``prior_only: True``) --------------------------------------------------------------
    def _prior_only(self, dm, feature, img_full, trace):
        flow, occ = dm["deformation"].permute(0, 3, 1, 2), dm["occlusion_logit"]
        warp_f, occs = [], []
        for f in feature:
            fr = _up(flow, f.shape[2:]) if flow.shape[2] != f.shape[2] else flow
            oc = _up(occ, f.shape[2:]) if flow.shape[2] != f.shape[2] else occ
            warp_f.append(F.grid_sample(f, fr.permute(0, 2, 3, 1), align_corners=False))
            occs.append(torch.sigmoid(oc))
        grid = fr.permute(0, 2, 3, 1)
        warp_img = F.grid_sample(img_full, grid, align_corners=False)
        out = self._gen("decode", warp_f, warp_img, occs)
        return {"prediction": out, "warp_img": warp_img, "grid": grid, "refined_grid": grid, "occlusion": occs[-1],
                "occlusions": occs}

    def correlation(self, kp_s, kp_d, img):
        """Structure correlation volume B×(h·w driving)×(h·w source) and the encoder outputs."""
        b, _, h, w = img.shape
        hs = kp2gaussian(kp_s, (h, w), self.kp_variance, fomm_arithmetic=True) + self.pos_embedding
        hd = kp2gaussian(kp_d, (h, w), self.kp_variance, fomm_arithmetic=True) + self.pos_embedding
        fe_s = self.kp_img(torch.cat([hs, img], dim=1))
        fe_d = self.kp(hd)
        k_s, q_d = self.kp_img_head(fe_s), self.kp_head(fe_d)
        corr = torch.bmm(q_d.flatten(2).transpose(1, 2), k_s.flatten(2)) * self.scale
        return corr, {"decoder.fe_s": fe_s, "decoder.fe_d": fe_d, "decoder.k_s": k_s, "decoder.q_d": q_d}

    def _refine_step(self, i: int, corr_volume: torch.Tensor, flow: torch.Tensor, feature: torch.Tensor,
                     trace: dict | None = None) -> torch.Tensor:
        """One refinement step at scale ``i``: correlation lookup around ``flow`` (B×2×r×r, pixels), motion
        encoding, context from ``feature`` warped by ``flow``, and the residual ``(ΔT, ΔO)`` B×3×r×r.

        ``corr_volume`` is B×(H·W driving)×(H·W source). The lookup reads, for each (pooled) driving pixel, an
        H×W source map: scales coarser than the prior's resolution average-pool the driving dims by k = 2^(bri-i)
        (done on a channels-last view, so the pooled volume comes out already laid out as (B·h'·w')×1×H×W: no
        transposed copies of the volume); finer scales sample at the prior's resolution and up-sample the lookup."""
        b, _, r, _ = flow.shape
        H, bri = self.h, self.basic_res_index
        id_grid = coords_grid(b, r, r, flow)
        flow_sample, id_sample, scale = flow, id_grid, 1
        if i < bri:
            k = scale = 2 ** (bri - i)
            pooled = F.avg_pool2d(corr_volume.view(b, H, H, H * H).permute(0, 3, 1, 2), k, stride=k)
            cv = pooled.permute(0, 2, 3, 1).reshape(-1, 1, H, H)
        else:
            cv = corr_volume.reshape(-1, 1, H, H)
            if i > bri:
                flow_sample = _up(flow, H) * 0.5 ** (i - bri)
                id_sample = coords_grid(b, H, H, flow)
        corr = CorrBlock(cv, self.corr_levels, self.corr_radius)((flow_sample + id_sample) * scale)
        if trace is not None:
            trace[f"iter{i}.corr_lookup"] = corr
        if i > bri:
            corr = _up(corr, r)
        m_f = self.corr_enc(flow, corr)
        ctx = F.relu(self.to_context[i](bilinear_sampler(feature, (flow + id_grid).permute(0, 2, 3, 1))))
        return self.refine(m_f, ctx)

    def forward(self, kp_s: torch.Tensor, kp_d: torch.Tensor, dm: dict, img: torch.Tensor, img_full: torch.Tensor,
                trace: dict | None = None, refine_iters: int | None = None) -> dict:
        """kp_s / kp_d: keypoint values B×K×2; dm: the prior (``deformation`` grid, ``occlusion_logit``); img: the
        source at the prior's resolution; img_full: the source. ``trace`` (a dict) collects the intermediates.
        ``refine_iters`` runs only the first K' ≤ K built steps (0: the prior-only path)."""
        refined = self.refined
        if refine_iters is not None:
            if refine_iters > len(self.refined) or refine_iters < 0:
                raise ValueError(f"refine_iters={refine_iters}: this model has {len(self.refined)} refinement steps")
            refined = self.refined[:refine_iters]
        feature = self._gen("encode", img_full)
        if trace is not None:
            trace.update({f"decoder.feature[{i}]": f for i, f in enumerate(feature)})
        if not refined:
            return self._prior_only(dm, feature, img_full, trace)
        b, _, h, w = img.shape
        H = self.h
        corr_volume, enc = self.correlation(kp_s, kp_d, img)
        id_grid = coords_grid(b, H, H, img)
        init_flow = (H - 1) * (dm["deformation"].permute(0, 3, 1, 2) + 1) / 2.0 - id_grid
        init_occ = dm["occlusion_logit"]
        if trace is not None:
            trace.update(enc)
            trace.update({"decoder.corr_volume": corr_volume, "decoder.init_flow": init_flow})
        f0 = self.h // self.start
        flow = F.interpolate(init_flow, scale_factor=1.0 / f0, mode="bilinear", align_corners=True) / f0
        occlusion = F.interpolate(init_occ, scale_factor=1.0 / f0, mode="bilinear", align_corners=True)
        bri, last = self.basic_res_index, refined[-1]
        warp_f, occs, warp_f_c = [], [], []
        d_pre = o_pre = None
        flow_w = flow
        for i in range(self.num_scales):
            r = self.start * 2 ** i
            id_grid = coords_grid(b, r, r, img)
            d_flow = None
            if trace is not None:
                trace[f"iter{i}.flow_in"] = flow
            if i in refined:
                if self.checkpoint and trace is None and torch.is_grad_enabled():
                    # no BatchNorm / randomness inside: the recomputation in backward is exact
                    d_flow = checkpointed(self._refine_step, None, i, corr_volume, flow, feature[i])
                else:
                    d_flow = self._refine_step(i, corr_volume, flow, feature[i], trace)
                flow_w = flow + d_flow[:, :2]
                occlusion = occlusion + d_flow[:, 2:]
                if trace is not None:
                    trace[f"iter{i}.d_flow"] = d_flow
                    trace[f"iter{i}.flow_refined"] = flow_w
            else:
                flow_w = flow
            warp_f.append(bilinear_sampler(feature[i], (flow_w + id_grid).permute(0, 2, 3, 1)))
            occs.append(torch.sigmoid(occlusion))
            # prior-warped features; the generator never reads the finest scale's (official code computes it)
            if i < self.num_scales - 1:
                fr = _up(dm["deformation"].permute(0, 3, 1, 2), feature[i].shape[2:]) if i != bri else \
                    dm["deformation"].permute(0, 3, 1, 2)
                warp_f_c.append(F.grid_sample(feature[i], fr.permute(0, 2, 3, 1), align_corners=False))
            else:
                warp_f_c.append(None)
            if trace is not None:
                oc = _up(init_occ, feature[i].shape[2:]) if i != bri else init_occ
                trace[f"iter{i}.occlusion_prob"] = occs[-1]
                trace[f"iter{i}.occlusion_prob_prior"] = torch.sigmoid(oc)
            if i < last:
                # next scale: prior flow resized there + all residuals so far, up-sampled (×2 per scale)
                nxt = r * 2
                d_f = _up(d_flow[:, :2]) * 2 if d_flow is not None else None
                d_o = _up(d_flow[:, 2:]) if d_flow is not None else None
                flow = _up(init_flow, nxt) / (2 ** (bri - i) / 2.0)
                occlusion = _up(init_occ, nxt)
                if d_f is not None:
                    flow, occlusion = flow + d_f, occlusion + d_o
                if d_pre is not None:
                    up_f, up_o = _up(d_pre) * 2, _up(o_pre)
                    flow, occlusion = flow + up_f, occlusion + up_o
                    d_f = up_f if d_f is None else d_f + up_f
                    d_o = up_o if d_o is None else d_o + up_o
                d_pre, o_pre = d_f, d_o
            elif i < self.num_scales - 1:      # official fewer-steps branch: up-sample without refinement
                flow = _up(flow) * 2
                occlusion = _up(occlusion)
        grid_px = (flow + id_grid).permute(0, 2, 3, 1)
        warp_img = bilinear_sampler(img_full, grid_px)
        out = self._gen("decode", warp_f, warp_img, occs, warp_f_c)
        if trace is not None:
            trace["decoder.warp_img"] = warp_img
            vis = occs + [torch.sigmoid(init_occ)]
            trace["decoder.occlusion_vis"] = torch.cat([_up(o, self.size) for o in vis], dim=3)
        n = self.size - 1
        return {"prediction": out, "warp_img": warp_img, "grid": grid_px / n * 2 - 1,
                "refined_grid": (flow_w + id_grid).permute(0, 2, 3, 1) / n * 2 - 1, "occlusion": occs[-1],
                "occlusions": occs, "init_occlusion": torch.sigmoid(init_occ)}
