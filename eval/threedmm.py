"""3DMM expression / pose errors (X-NeMo's AED / APD; X-Portrait's expression and pose error) from Deep3DFaceRecon
coefficients: ``aed_3dmm_deep3d``, ``apd_3dmm_deep3d``, ``pose_deg_deep3d``.

Regressor: Deep3DFaceRecon (Deng et al. 2019, ``sicxu/Deep3DFaceRecon_pytorch``), the original release
(``checkpoints/<name>/epoch_20.pth``, its ``net_recon`` state dict), registered as ``deep3dfacerecon_epoch20`` in
``eval.weights``. What runs per frame is the official test path (``test.py`` ``read_data`` → ``models/networks.py``
``ReconNetWrapper``), without the renderer:

1. 5 facial landmarks (image pixels, y down): MTCNN (Zhang et al. 2016) as facenet-pytorch 2.6.0 ships it
   (``facenet_pytorch.MTCNN`` with its defaults: ``min_face_size=20``, thresholds 0.6 / 0.7 / 0.7, factor 0.709,
   the largest face; weights ``pnet.pt`` / ``rnet.pt`` / ``onet.pt`` inside the wheel, registry entry
   ``mtcnn_facenet_pytorch``) — the official README's recommended detector (ipazc/mtcnn, the same networks) for
   the ``detections/*.txt`` files ``test.py`` reads; order: left eye, right eye, nose, left / right mouth corner.
2. ``read_data``: ``lm[:, 1] = H − 1 − lm[:, 1]`` (y up), then ``util/preprocess.py`` ``align_img``: ``POS`` —
   the least-squares scaled orthographic fit of the 5 points to the 5 standard 3-D landmarks (``load_lm3d``:
   ``BFM/similarity_Lm3D_all.mat``, :data:`LM3D_STD`) giving translation t and scale s; ``s = 102 / s``;
   ``resize_n_crop_img``: PIL bicubic resize of the whole image to ``(int(W·s), int(H·s))``, then the 224² crop
   whose corner is ``(int(w/2 − 112 + (t_x − W/2)·s), int(h/2 − 112 + (H/2 − t_y)·s))``.
3. RGB / 255 (float32, NCHW) → ``ReconNetWrapper`` (ResNet-50 backbone without its fc, global average pool, seven
   1×1 convolutions 80 | 64 | 80 | 3 | 27 | 2 | 1 concatenated) → 257 coefficients, split as
   ``models/bfm.py`` ``ParametricFaceModel.split_coeff``: identity 0:80, expression 80:144, texture 144:224,
   angles 224:227 (radians), lighting 227:254, translation 254:257.

The Basel Face Model (``bfm09_front_face``) is not needed: it turns coefficients into a mesh for rendering only.

Metrics (per frame t, generated x̂_t vs reference x_t — the target, else the driving frame):

* ``aed_3dmm_deep3d``  — mean |exp(x̂_t) − exp(x_t)| over the 64 expression coefficients
* ``apd_3dmm_deep3d``  — mean |pose(x̂_t) − pose(x_t)| over the 6 pose coefficients (3 angles in radians + 3
  translations)
* ``pose_deg_deep3d``  — mean |angle(x̂_t) − angle(x_t)| over the 3 angles, in degrees

A frame where MTCNN finds no face on either side is NaN (left out of the means) and counted in each metric's ``facts``
(``frames``, ``no_face_pred``, ``no_face_reference``); ``per_frame.csv`` shows which frames. The three metrics share
one analysis per frame (landmarks, alignment, regression), and frames met again (the repeated source of
copy-source, a reference scored for two models) are analysed once.

Weights: ``deep3dfacerecon_epoch20`` (absent → ``MissingWeightsError`` naming the file, where to put it and the URL,
when the metric is built — before any frame is read) and MTCNN's (in the facenet-pytorch wheel). With
``standin_metrics`` naming the metric (or ``deep3d`` / ``3dmm``), the regressor runs with deterministic seeded
weights (:func:`standin_state_dict`) and the metrics are named ``*_STANDIN``; MTCNN keeps its real weights.
The 5-point source is part of what the ``*_deep3d`` names mean (Deep3DFaceRecon on MTCNN points); another detector
would need other names. Checked against the official code run unchanged on real frames (``tests/eval/test_threedmm.py``,
``tests/golden/deep3d/NOTES.md``).
"""
from __future__ import annotations

import math
import zlib
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from eval.protocol import PredUint8
from toolbox.choices import as_choice

REGRESSOR = "deep3dfacerecon_epoch20"
DETECTOR = "mtcnn_facenet_pytorch"
THREEDMM_WEIGHTS = (REGRESSOR, DETECTOR)
"""Registry entries a 3DMM metric needs: the regressor (not with the stand-in) and MTCNN's (inside the facenet-pytorch
wheel); :func:`required_weights` says which for one metric of a protocol (``eval.preflight``)."""
REFERENCE = "sicxu/Deep3DFaceRecon_pytorch (test.py read_data, util/preprocess.py align_img, models/networks.py)"

TARGET_SIZE = 224            # align_img's target_size
RESCALE_FACTOR = 102.0       # align_img's rescale_factor
LM3D_STD = np.array([        # util/load_mats.py load_lm3d('BFM'): 5 points of BFM/similarity_Lm3D_all.mat (float32)
    [-0.3114865720272064, 0.29036077857017517, 0.13377952575683594],
    [0.30979886651039124, 0.289720356464386, 0.1317952573299408],
    [0.003253498813137412, -0.04617932438850403, 0.5524424314498901],
    [-0.25216928124427795, -0.3813391625881195, 0.22405731678009033],
    [0.24846619367599487, -0.38128235936164856, 0.22235769033432007]], dtype=np.float32)
COEFF_SLICES = {"id": slice(0, 80), "exp": slice(80, 144), "tex": slice(144, 224), "angle": slice(224, 227),
                "gamma": slice(227, 254), "trans": slice(254, 257)}     # models/bfm.py split_coeff
METRICS = ("aed_3dmm_deep3d", "apd_3dmm_deep3d", "pose_deg_deep3d")


class ThreeDMMUnavailable(RuntimeError):
    """A 3DMM metric cannot be computed (its detector package is not installed)."""


# ---- the network -----------------------------------------------------------------------------------------------
class Deep3DReconNet(nn.Module):
    """``models/networks.py`` ``ReconNetWrapper('resnet50', use_last_fc=False)``: torchvision's ResNet-50 (the
    official file is torchvision's ResNet) without its fc, its pooled 2048×1×1 feature through the seven 1×1
    ``final_layers`` (id 80, exp 64, tex 80, angle 3, gamma 27, tx/ty 2, tz 1), concatenated → B×257. Input: RGB in
    [0, 1], B×3×224×224. Parameter names = the ``net_recon`` state dict of ``epoch_20.pth``."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        self.backbone = resnet50()
        del self.backbone.fc
        self.final_layers = nn.ModuleList([nn.Conv2d(2048, n, 1, bias=True) for n in (80, 64, 80, 3, 27, 2, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.avgpool(b.layer4(b.layer3(b.layer2(b.layer1(x)))))
        return torch.flatten(torch.cat([layer(x) for layer in self.final_layers], dim=1), 1)


STANDIN_SEED = 3
STANDIN_HEAD_STD = (5e-4, 0.1)   # stand-in final layers: N(0, std²) weights, biases (coefficients of order 1)


def standin_state_dict() -> dict[str, torch.Tensor]:
    """Stand-in ``net_recon`` weights: :class:`Deep3DReconNet`'s default initialisation under
    ``torch.manual_seed(STANDIN_SEED)``; batch-norm running statistics from a generator seeded ``1000 +
    STANDIN_SEED`` (mean N(0, 0.1²), var U(0.5, 1.5)); the final 1×1 layers (zero in the official initialisation,
    which would give all-zero coefficients) weights N(0, 5e-4²) and biases N(0, 0.1²) from that generator
(``STANDIN_HEAD_STD``; the randomly initialised backbone's pooled features are large). The same tensors are
    loaded into the official ``ReconNetWrapper`` for the golden (``tests/golden/deep3d``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(STANDIN_SEED)
        net = Deep3DReconNet()
        g = torch.Generator().manual_seed(1000 + STANDIN_SEED)
        for m in net.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        with torch.no_grad():
            for layer in net.final_layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * STANDIN_HEAD_STD[0])
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * STANDIN_HEAD_STD[1])
        return {k: v.detach().clone() for k, v in net.state_dict().items()}


def standin_digest() -> int:
    """CRC32 over the stand-in state dict's names and bytes (recorded in the golden's NOTES.md / meta)."""
    h = 0
    for k, v in sorted(standin_state_dict().items()):
        h = zlib.crc32(v.contiguous().numpy().tobytes(), zlib.crc32(k.encode(), h))
    return h


def load_regressor(standin: bool = False, pins: Optional[dict] = None, device="cpu") -> Deep3DReconNet:
    """The regressor with the released weights (``epoch_20.pth``'s ``net_recon``; absent → ``MissingWeightsError``)
    or the stand-in ones."""
    if standin:
        sd = standin_state_dict()
    else:
        from eval.weights import resolve

        path = resolve(REGRESSOR, (pins or {}).get(REGRESSOR))
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "net_recon" not in ckpt:
            raise ValueError(f"{path}: not a Deep3DFaceRecon checkpoint (no 'net_recon' state dict; keys "
                             f"{sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__})")
        sd = ckpt["net_recon"]
    net = Deep3DReconNet()
    net.load_state_dict(sd)
    return net.to(device).eval().requires_grad_(False)


# ---- alignment (util/preprocess.py) ---------------------------------------------------------------------------
def pos(xp: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``POS(xp, x)``: xp 2×n image points, x 3×n model points → (t 2×1, s) of the least-squares affine camera
    ``xp ≈ [R1; R2]·x + t``, s = mean row norm of the 2×3 part."""
    n = xp.shape[1]
    A = np.zeros([2 * n, 8])
    A[0:2 * n - 1:2, 0:3] = x.transpose()
    A[0:2 * n - 1:2, 3] = 1
    A[1:2 * n:2, 4:7] = x.transpose()
    A[1:2 * n:2, 7] = 1
    b = np.reshape(xp.transpose(), [2 * n, 1])
    k, _, _, _ = np.linalg.lstsq(A, b, rcond=None)
    s = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    return np.stack([k[3], k[7]], axis=0), s


def align(img_u8: np.ndarray, lm5_ydown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``read_data`` + ``align_img`` on an H×W×3 uint8 RGB frame and its 5 points (pixels, y down) → (the 224²
    RGB uint8 crop, trans_params ``[W, H, s, t_x, t_y]`` as ``align_img`` returns them)."""
    from PIL import Image

    h0, w0 = img_u8.shape[:2]
    lm = np.asarray(lm5_ydown, dtype=np.float32).reshape(-1, 2).copy()
    lm[:, -1] = h0 - 1 - lm[:, -1]
    t, s = pos(lm.transpose(), LM3D_STD.transpose())
    s = RESCALE_FACTOR / float(s)
    tx, ty = float(t[0][0]), float(t[1][0])
    w = int(np.float64(w0 * s).astype(np.int32))
    h = int(np.float64(h0 * s).astype(np.int32))
    left = int(np.float64(w / 2 - TARGET_SIZE / 2 + (tx - w0 / 2) * s).astype(np.int32))
    up = int(np.float64(h / 2 - TARGET_SIZE / 2 + (h0 / 2 - ty) * s).astype(np.int32))
    im = Image.fromarray(np.ascontiguousarray(img_u8)).resize((w, h), resample=Image.Resampling.BICUBIC)
    im = im.crop((left, up, left + TARGET_SIZE, up + TARGET_SIZE))
    return np.asarray(im), np.array([w0, h0, s, tx, ty], dtype=np.float64)


# ---- 5-point detector ------------------------------------------------------------------------------------------
def require_facenet_pytorch() -> None:
    """facenet-pytorch importable, else :class:`ThreeDMMUnavailable` saying how to install it."""
    from importlib.util import find_spec

    if find_spec("facenet_pytorch") is None:
        raise ThreeDMMUnavailable("the 3DMM metrics' 5-point detector (MTCNN) needs facenet-pytorch: "
                                  "`pip install --no-deps facenet-pytorch==2.6.0` (its wheel pins torch<2.3; the "
                                  "MTCNN code runs on this torch)")


class MTCNNLandmarks:
    """facenet-pytorch 2.6.0's MTCNN with its defaults (the largest face), batched over a video's frames: N×H×W×3
    uint8 → per frame the 5×2 points (pixels, y down) or None."""

    name = "mtcnn_facenet_pytorch"

    def __init__(self, device="cpu"):
        from eval.weights import resolve

        require_facenet_pytorch()
        resolve(DETECTOR)
        self._build(device)

    def _build(self, device):
        from facenet_pytorch import MTCNN

        self.device = torch.device(device)
        self.mtcnn = MTCNN(device=self.device)

    def to(self, device):
        if torch.device(device) != self.device:
            self._build(device)
        return self

    batch_size = 32     # frames per MTCNN call (each image's detections are independent of the others')

    @torch.no_grad()
    def __call__(self, frames_u8: np.ndarray) -> list[Optional[np.ndarray]]:
        out: list[Optional[np.ndarray]] = []
        for i in range(0, len(frames_u8), self.batch_size):
            chunk = np.ascontiguousarray(frames_u8[i:i + self.batch_size])
            _, _, points = self.mtcnn.detect(chunk, landmarks=True)
            for p in points:
                out.append(None if p is None or len(p) == 0 else np.asarray(p[0], dtype=np.float32).reshape(5, 2))
        return out


# ---- analysis and metrics --------------------------------------------------------------------------------------
class Deep3DAnalyzer:
    """Frames → per frame the 257 coefficients (float64) or None (no face): MTCNN 5 points → ``align`` → the
    regressor, batched on the device; memoised by frame content (``eval.pose_eval._FrameMemo``)."""

    name = "deep3d"

    def __init__(self, device="cpu", standin: bool = False, pins: Optional[dict] = None, batch_size: int = 32,
                 detector=None):
        from eval.pose_eval import _FrameMemo

        self.net = load_regressor(standin, pins, device)       # the weights first: absent → error before work
        self.detector = detector if detector is not None else MTCNNLandmarks(device)
        self.device, self.standin, self.batch_size = torch.device(device), bool(standin), int(batch_size)
        self._memo = _FrameMemo()

    def to(self, device):
        self.device = torch.device(device)
        self.net.to(self.device)
        if hasattr(self.detector, "to"):
            self.detector.to(self.device)
        return self

    def inputs(self, frames_u8: np.ndarray):
        """(landmarks per frame, aligned 224² crops of the frames with a face, trans_params, indices of those)."""
        lms = self.detector(frames_u8)
        found = [i for i, lm in enumerate(lms) if lm is not None]
        crops, params = [], []
        for i in found:
            c, p = align(frames_u8[i], lms[i])
            crops.append(c)
            params.append(p)
        return lms, crops, params, found

    @torch.no_grad()
    def regress(self, crops: list[np.ndarray]) -> np.ndarray:
        """224² RGB uint8 crops → B×257 coefficients (``torch.tensor(np.array(im) / 255., float32)``, NCHW)."""
        if not crops:
            return np.zeros((0, 257))
        x = torch.tensor(np.stack(crops) / 255.0, dtype=torch.float32).permute(0, 3, 1, 2)
        out = [self.net(x[i:i + self.batch_size].to(self.device)).float().cpu()
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float64)

    def _compute(self, frames_u8: np.ndarray) -> list[Optional[np.ndarray]]:
        lms, crops, _, found = self.inputs(frames_u8)
        coeffs = self.regress(crops)
        out: list[Optional[np.ndarray]] = [None] * len(lms)
        for k, i in enumerate(found):
            out[i] = coeffs[k]
        return out

    def coefficients(self, frames_u8: np.ndarray) -> list[Optional[np.ndarray]]:
        return self._memo._memo(frames_u8, self._compute)


def _results(fb, analyzer: Deep3DAnalyzer, which: str, rounding: str) -> list[Optional[np.ndarray]]:
    key = ("deep3d", which, analyzer.standin)
    if key not in fb.cache:
        fb.cache[key] = analyzer.coefficients(fb.u8(which, rounding))
    return fb.cache[key]


class ThreeDMMMetric:
    """One of :data:`METRICS` on a shared :class:`Deep3DAnalyzer` (``eval.metrics.Metric`` interface:
    ``frames(fb)`` → N values, NaN where a side has no face)."""

    needs_target = False    # compared with the driving frames when there is no target (cross reenactment)

    def __init__(self, name: str, analyzer: Deep3DAnalyzer, pred_uint8: str = "round"):
        from eval.metrics import STANDIN_SUFFIX

        if name not in METRICS:
            raise ValueError(f"unknown 3DMM metric {name!r} (one of {', '.join(METRICS)})")
        self.base_name, self.analyzer = name, analyzer
        self.pred_uint8 = as_choice(PredUint8, pred_uint8, "eval_protocol.pred_uint8")
        self.standin = analyzer.standin
        self.name = name + (STANDIN_SUFFIX if self.standin else "")
        self.facts = {"regressor": REGRESSOR + (STANDIN_SUFFIX if self.standin else ""), "landmarks5": DETECTOR,
                      "frames": 0, "no_face_pred": 0, "no_face_reference": 0}

    def to(self, device):
        self.analyzer.to(device)
        return self

    @staticmethod
    def distance(name: str, p: np.ndarray, r: np.ndarray) -> float:
        if name == "aed_3dmm_deep3d":
            return float(np.mean(np.abs(p[COEFF_SLICES["exp"]] - r[COEFF_SLICES["exp"]])))
        if name == "apd_3dmm_deep3d":
            pose = np.r_[224:227, 254:257]
            return float(np.mean(np.abs(p[pose] - r[pose])))
        a = COEFF_SLICES["angle"]
        return float(np.mean(np.abs(p[a] - r[a])) * 180.0 / math.pi)

    def frames(self, fb) -> np.ndarray:
        pred = _results(fb, self.analyzer, "pred", self.pred_uint8)
        ref = _results(fb, self.analyzer, "reference", "round")
        self.facts["frames"] += len(pred)
        self.facts["no_face_pred"] += sum(p is None for p in pred)
        self.facts["no_face_reference"] += sum(r is None for r in ref)
        return np.array([self.distance(self.base_name, p, r) if p is not None and r is not None else np.nan
                         for p, r in zip(pred, ref)], dtype=np.float64)


def is_standin(name: str, standins) -> bool:
    """Whether the protocol's ``standin_metrics`` names this metric's stand-in: ``name``, ``deep3d`` or ``3dmm``."""
    return bool(set(standins or ()) & {name, "deep3d", "3dmm"})


def required_weights(name: str, standins=()) -> list[str]:
    """The registry entries metric ``name`` needs: the regressor unless it is a stand-in, and MTCNN."""
    return ([] if is_standin(name, standins) else [REGRESSOR]) + [DETECTOR]


_ANALYZERS: dict = {}     # the last built analyzer: the three metrics of a suite share it (analyses are pure)


def build_threedmm_metric(name: str, protocol, pins: Optional[dict] = None, device="cpu") -> ThreeDMMMetric:
    """The metric ``name`` of ``protocol``; the three metrics share one :class:`Deep3DAnalyzer` (one regression per
    frame). Stand-in when ``standin_metrics`` lists ``name``, ``deep3d`` or ``3dmm``; otherwise the released
    weights are resolved here on every build (absent → ``MissingWeightsError``), before any frame is read."""
    from eval.weights import resolve

    if name not in METRICS:
        raise ValueError(f"eval_protocol.metrics: unknown 3DMM metric {name!r} (one of {', '.join(METRICS)})")
    standin = is_standin(name, protocol.get("standin_metrics", []) or [])
    pins = dict(pins or {})
    if not standin:
        resolve(REGRESSOR, pins.get(REGRESSOR))
    require_facenet_pytorch()
    resolve(DETECTOR)
    key = (standin, str(device), None if standin else pins.get(REGRESSOR))
    if key not in _ANALYZERS:
        _ANALYZERS.clear()
        _ANALYZERS[key] = Deep3DAnalyzer(device=device, standin=standin, pins=pins)
    return ThreeDMMMetric(name, _ANALYZERS[key], str(protocol.get("pred_uint8", "round")))
