"""The evaluation metrics, one implementation each, computed in one pass over a video's frames.

Per-frame metrics (values per generated frame x̂_t against the target x_t or the source S):

* ``l1``   = mean |x̂_t − x_t|  (pixels in [0, 1])
* ``psnr`` = 10 log10(1 / max(MSE(x̂_t, x_t), floor))  (data range 1, float64; ``floor`` = the protocol's
  ``psnr_mse_floor``, 1e-10 → at most 100 dB)
* ``tdiff_l1`` = mean |(x̂_t − x̂_{t−1}) − (x_t − x_{t−1})|  (temporal consistency, no weights)
* ``ssim`` : gaussian window σ = 1.5 (11 taps), K1 = 0.01, K2 = 0.03, data range 1, mean over the valid region
  (equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``;
  separable convolutions, see ``ssim_frames``)
* ``lpips_alex`` / ``lpips_vgg``: Zhang et al. 2018, the official ``lpips`` package (v0.1 linear heads).
* ``id_*``, ``aed_*``, ``akd_*``, ``mkr_*``: see ``eval.faces``.

Dataset-level: ``fid`` (see ``eval.fid``), ``fvd`` (see ``eval.fvd``).

``FrameBatch`` holds one video's frames at the protocol's resolution and caches every derived view (uint8 copies,
face analyses, LPIPS inputs), so that several metrics that need the same view compute it once.
"""
from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from eval.protocol import PredUint8
from toolbox.choices import as_choice

STANDIN_SUFFIX = "_STANDIN"

# direction of each metric family (prefix before the first "_"): True = higher is better. Only eval's own metrics:
# a model probe's metrics (MRFA's motion_err_*, X-NeMo's motion_gain, …) carry the direction its probe declares
# (eval.probes).
HIGHER_IS_BETTER = {"l1": False, "psnr": True, "ssim": True, "lpips": False, "fid": False, "id": True,
                    "akd": False, "aed": False, "mkr": False, "csim": True,
                    "phase": True, "clip": True, "dino": True, "fvd": False, "tdiff": False}


# several-word prefixes checked first (identity leakage: the output looking like the driver is bad)
_PREFIX_DIRECTION = (("id_leakage", False), ("id_to_driver", False), ("id_to_source", True), ("contact_rate", None),
                     ("phase_score_source", None),
                     # evaluation coverage counts (eval.runner): facts about the run, not quality
                     ("nonfinite_", None), ("upscaled_", None), ("skipped_", None))


def higher_is_better(name: str) -> Optional[bool]:
    """True / False when higher / lower values of metric ``name`` are better, None when neither. A metric declared
    by a probe (``eval.probes``) has the probe's direction; eval's own metrics go by prefix, then family."""
    from eval.probes import declared_direction

    declared, hib = declared_direction(name)
    if declared:
        return hib
    low = name.lower().rsplit("/", 1)[-1]   # "<extra protocol>/<metric>" reads as <metric>
    for prefix, hib in _PREFIX_DIRECTION:
        if low.startswith(prefix):
            return hib
    return HIGHER_IS_BETTER.get(low.split("_")[0])


class FrameBatch:
    """One video's frames (N×3×H×W float in [0, 1]) plus lazily computed shared views."""

    def __init__(self, pred: torch.Tensor, target: Optional[torch.Tensor], source: torch.Tensor,
                 driving: Optional[torch.Tensor] = None, keypoints: Optional[torch.Tensor] = None,
                 video_id: str = "", pred_keypoints: Optional[torch.Tensor] = None,
                 masks: Optional[dict[str, torch.Tensor]] = None, frame_index: Optional[list[int]] = None):
        self.pred = pred.float().clamp(0, 1)
        self.target = None if target is None else target.float().clamp(0, 1)
        self.source = source.float().clamp(0, 1)
        self.driving = None if driving is None else driving.float().clamp(0, 1)
        self.keypoints = keypoints
        self.pred_keypoints = pred_keypoints
        self.masks = masks          # {"hand", "face"} N×1×H×W of the target frames (SynthFaces), or None
        self.video_id = video_id
        self.frame_index = frame_index    # positions of these frames in the video's scored sequence (gaps: dropped)
        self.cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return self.pred.shape[0]

    @property
    def reference(self) -> torch.Tensor:
        """What motion is compared against: the target when there is one, else the driving frames."""
        if self.target is not None:
            return self.target
        if self.driving is None:
            raise ValueError(f"video {self.video_id!r}: neither target nor driving frames")
        return self.driving

    @staticmethod
    def _u8(x: torch.Tensor, rounding: str = "round") -> np.ndarray:
        """uint8 frames: ``round`` (x·255 + 0.5, truncated) or ``floor`` ((255·x).astype(uint8), what FOMM's and
        MRFA's ``reconstruction.py`` write to the PNGs pose-evaluation reads)."""
        a = x.detach().cpu().permute(0, 2, 3, 1).numpy() * 255
        return (a + 0.5 if rounding == "round" else a).astype(np.uint8)

    @cached_property
    def pred_u8(self) -> np.ndarray:
        return self._u8(self.pred)

    @cached_property
    def reference_u8(self) -> np.ndarray:
        return self._u8(self.reference)

    @cached_property
    def source_u8(self) -> np.ndarray:
        return self._u8(self.source[None])[0]

    @cached_property
    def driving_u8(self) -> np.ndarray:
        if self.driving is None:
            raise ValueError(f"video {self.video_id!r}: no driving frames")
        return self._u8(self.driving)

    def u8(self, which: str, rounding: str = "round"):
        # floor: only generated frames (real frames are uint8 already)
        if as_choice(PredUint8, rounding, "eval_protocol.pred_uint8") == "floor" and which == "pred":
            key = ("pred_u8_floor",)
            if key not in self.cache:
                self.cache[key] = self._u8(self.pred, "floor")
            return self.cache[key]
        if which == "driving":
            return self.driving_u8
        return {"pred": self.pred_u8, "reference": self.reference_u8, "source": self.source_u8}[which]


class Metric:
    """A per-frame metric: ``frames(fb)`` returns N values (NaN where undefined, e.g. no face found)."""

    name: str = ""
    standin: bool = False
    needs_target: bool = True

    def frames(self, fb: FrameBatch) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def to(self, device) -> "Metric":
        return self


def _require_target(fb: FrameBatch, name: str) -> torch.Tensor:
    if fb.target is None:
        raise ValueError(f"metric `{name}` needs a target (self or synth_cross protocols); video {fb.video_id!r} has none")
    return fb.target


class L1(Metric):
    name = "l1"

    def frames(self, fb):
        t = _require_target(fb, self.name)
        return (fb.pred.double() - t.double()).abs().flatten(1).mean(1).cpu().numpy()


class PSNR(Metric):
    """PSNR = 10 log10(1 / max(MSE, ``mse_floor``)) (data range 1): the floor is the protocol's declared cap
    (``psnr_mse_floor``, default 1e-10 → 100 dB), so identical frames (e.g. black on black) give a finite value."""

    name = "psnr"

    def __init__(self, mse_floor: float = 1e-10):
        if not mse_floor > 0:
            raise ValueError(f"eval_protocol.psnr_mse_floor={mse_floor} must be > 0 (PSNR of identical frames is "
                             "infinite without it)")
        self.mse_floor = float(mse_floor)

    def frames(self, fb):
        # float64 throughout (torchmetrics' PSNR rounds its 10/ln 10 factor through float32: ~1e-7 relative off)
        t = _require_target(fb, self.name)
        mse = (fb.pred.double() - t.double()).pow(2).flatten(1).mean(1).clamp_min(self.mse_floor)
        return (10 * torch.log10(1.0 / mse)).cpu().numpy()


class TemporalDiffL1(Metric):
    """``tdiff_l1`` (weight-free temporal consistency against ground truth): per frame t,
    mean |(x̂_t − x̂_{t−1}) − (x_t − x_{t−1})| — flicker or frozen motion the target does not have. Consecutive
    scored frames only: the first scored frame of a video (and a frame after a gap) is NaN."""

    name = "tdiff_l1"

    def frames(self, fb):
        t = _require_target(fb, self.name)
        out = np.full(len(fb), np.nan)
        if len(fb) < 2:
            return out
        dp = fb.pred[1:].double() - fb.pred[:-1].double()
        dt = t[1:].double() - t[:-1].double()
        vals = (dp - dt).abs().flatten(1).mean(1).cpu().numpy()
        consecutive = np.ones(len(fb) - 1, bool)
        if fb.frame_index is not None:
            idx = np.asarray(fb.frame_index)
            consecutive = (idx[1:] - idx[:-1]) == 1
        out[1:] = np.where(consecutive, vals, np.nan)
        return out


def ssim_frames(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5, data_range: float = 1.0, k1: float = 0.01,
                k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, gaussian window σ, truncated at 3.5σ), mean over the valid region.

    Same definition as ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``
    and torchmetrics' SSIM map (interior); written as two separable 1-D filters because torchmetrics' 11×11 grouped
    convolution takes seconds per frame on CPU and materialises gigabytes at 256² (see benchmarks/eval_suite.py).
    """
    return ssim_map(x, y, sigma, data_range, k1, k2).flatten(1).mean(1)


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5, data_range: float = 1.0, k1: float = 0.01,
             k2: float = 0.03, pad: bool = False) -> torch.Tensor:
    """The SSIM map, N×C×(H−2r)×(W−2r) (``pad=False``: the valid region ``ssim_frames`` averages) or N×C×H×W
    (``pad=True``: inputs reflect-padded by r first, as torchmetrics' ``return_full_image``; the interior equals the
    valid map). Region metrics average it over a mask (``eval.regions``)."""
    r = int(3.5 * sigma + 0.5)
    if pad:
        x = F.pad(x, (r, r, r, r), mode="reflect")
        y = F.pad(y, (r, r, r, r), mode="reflect")
    coords = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    N, C, H, W = x.shape
    stack = torch.stack([x, y, x * x, y * y, x * y], 1)
    # separable 'valid' filtering as weighted sums of shifted views (fast and im2col-free on CPU)
    Wv, Hv = W - 2 * r, H - 2 * r
    h = stack[..., 0:Wv] * g[0]
    for k in range(1, 2 * r + 1):
        h.add_(stack[..., k:k + Wv], alpha=float(g[k]))
    f = h[..., 0:Hv, :] * g[0]
    for k in range(1, 2 * r + 1):
        f.add_(h[..., k:k + Hv, :], alpha=float(g[k]))                     # (H−2r)×(W−2r)
    mx, my, xx, yy, xy = f.unbind(1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


class SSIM(Metric):
    name = "ssim"

    def __init__(self, sigma: float = 1.5, chunk: int = 16):
        self.sigma, self.chunk = sigma, chunk

    def frames(self, fb):
        t = _require_target(fb, self.name)
        # float32 (as the frames): within ~1e-6 of the float64 reference (checked against skimage in tests)
        out = [ssim_frames(fb.pred[i:i + self.chunk], t[i:i + self.chunk], self.sigma)
               for i in range(0, len(fb), self.chunk)]
        return torch.cat(out).double().cpu().numpy()


# ---- LPIPS -----------------------------------------------------------------------------------------------------
_LPIPS_TRUNK_WEIGHTS = {"alex": "alexnet_imagenet", "vgg": "vgg16_imagenet"}


def _load_lpips_trunk(model, net: str, path) -> None:
    """Copy torchvision ``<net>.features.<i>.*`` weights into lpips' ``slice<k>.<i>.*`` modules."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    mapped = {}
    for key in model.net.state_dict():
        _, rest = key.split(".", 1)          # slice<k>.<i>.<param> -> <i>.<param>
        if rest not in feats:
            raise KeyError(f"{path}: no `features.{rest}` for LPIPS trunk `{net}`; is this torchvision {net} weights?")
        mapped[key] = feats[rest]
    model.net.load_state_dict(mapped)


def build_lpips(net: str = "alex", trunk_path=None):
    """The official ``lpips.LPIPS`` (v0.1 linear heads shipped in its wheel) with the ImageNet trunk loaded from
    ``trunk_path`` or the weights registry (torch hub cache / env override); missing trunk weights are an error."""
    import lpips

    from eval.weights import resolve

    if net not in _LPIPS_TRUNK_WEIGHTS:
        raise ValueError(f"lpips net must be one of {sorted(_LPIPS_TRUNK_WEIGHTS)}, got {net!r}")
    path = trunk_path or resolve(_LPIPS_TRUNK_WEIGHTS[net])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    _load_lpips_trunk(model, net, path)
    return model.eval().requires_grad_(False)


class LPIPS(Metric):
    """LPIPS per frame (inputs [0, 1] → [-1, 1] as lpips expects). ``standin=True`` keeps a randomly initialised
    trunk (seeded) and names the metric ``lpips_<net>_STANDIN`` — only when a config asks for it explicitly.

    ``official_range=True`` is ``lpips_<net>_official``: the [0, 1] frames fed to the network unchanged, as MRFA's
    ``reconstruction.py`` calls ``lpips.LPIPS(net='vgg')(driving, out)`` without ``normalize=True`` (LPIPS is
    defined on [-1, 1]; this variant reproduces the paper's LPIPS column, not LPIPS)."""

    def __init__(self, net: str = "alex", trunk_path=None, standin: bool = False, chunk: int = 32, device="cpu",
                 official_range: bool = False, model=None):
        self.net, self.standin, self.chunk, self.official_range = net, standin, chunk, official_range
        self.name = f"lpips_{net}" + ("_official" if official_range else "") + (STANDIN_SUFFIX if standin else "")
        if model is not None:       # share the network of another LPIPS metric (lpips_vgg and lpips_vgg_official)
            self.model, self.device = model, torch.device(device)
            return
        if standin:
            import warnings

            import lpips

            with torch.random.fork_rng():
                torch.manual_seed(0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
            self.model.requires_grad_(False)
        else:
            self.model = build_lpips(net, trunk_path)
        self.device = torch.device(device)
        self.model.to(self.device)

    def to(self, device):
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """N×3×H×W in [0, 1] each → N distances."""
        out = []
        for i in range(0, pred.shape[0], self.chunk):
            p = pred[i:i + self.chunk].to(self.device)
            t = target[i:i + self.chunk].to(self.device)
            if not self.official_range:
                p, t = p * 2 - 1, t * 2 - 1
            out.append(self.model(t, p).flatten().double().cpu())
        return torch.cat(out)

    def frames(self, fb):
        return self(fb.pred, _require_target(fb, self.name)).numpy()


# ---- keypoint distance on given keypoints (SynthFaces ground truth) --------------------------------------------
def keypoint_distance(kp_a, kp_b) -> np.ndarray:
    """Per-frame AKD: mean over keypoints of the L2 distance (pixels) between T×K×2 arrays; NaN keypoints skipped."""
    a = np.asarray(kp_a, dtype=np.float64)
    b = np.asarray(kp_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"keypoint shapes differ: {a.shape} vs {b.shape}")
    d = np.linalg.norm(a - b, axis=-1)
    with np.errstate(invalid="ignore"):
        return np.nanmean(d, axis=-1) if d.size else np.zeros(a.shape[0])


class AKDGroundTruth(Metric):
    """``akd_gt``: AKD between the keypoints of the generated frames and the target's ground-truth keypoints
    (SynthFaces). The generated frames' keypoints come from ``fb.pred_keypoints`` (set by a keypoint locator the
    caller supplies, e.g. SynthFaces' own); without it the metric is NaN."""

    name = "akd_gt"
    needs_target = False

    def frames(self, fb):
        if fb.keypoints is None or fb.pred_keypoints is None:
            return np.full(len(fb), np.nan)
        return keypoint_distance(torch.as_tensor(fb.pred_keypoints).cpu(), torch.as_tensor(fb.keypoints).cpu())


def nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan
