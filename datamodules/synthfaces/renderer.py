"""SynthFaces renderer: a procedural talking face I(id, m_t) with exact ground truth.

A frame is a pure function of two separate parameter sets:

* identity ``id`` (:func:`sample_identity`) — face shape (ellipse axes, jaw), skin / hair colour, hair style,
  eye / brow / nose / mouth geometry and colours, shirt and background;
* motion ``m_t`` (:func:`sample_motion`) — per-frame pose (yaw, pitch, roll, translation, scale), expression
  (mouth open, smile, blink, brows, gaze) and an optional hand that moves in and touches a face region.

Geometry lives in a canonical 3-D face frame (units of the face half-height, x right, y down, z towards the
camera) and is projected orthographically, ``x_t = c_t + s_t · Π R(roll, pitch, yaw) X(id, expr_t)``, so roll is an
in-plane rotation and yaw / pitch shift the features by their depth and foreshorten the face. The keypoints
``K_t`` (``KEYPOINT_NAMES``) are vertices of the very polygons that are drawn. Because identity and motion are
separate, identity A can perform clip B's motion: the cross-identity ground truth no real dataset has.

Drawing: numpy + OpenCV (``LINE_AA``, sub-pixel ``shift``) at ×2 supersampling, then an area downscale.
Pixel convention: pixel centres at integer coordinates (OpenCV): ``x_pix = u · resolution − 0.5``, ``u ∈ [0, 1]``.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any, Mapping

import cv2
import numpy as np

SHIFT = 4                       # OpenCV sub-pixel bits for every drawing call
_ONE = 1 << SHIFT
SUPERSAMPLE = 2

KEYPOINT_NAMES: tuple[str, ...] = (
    # contour / jaw (image left → chin → image right)
    "contour_left", "jaw_left", "chin", "jaw_right", "contour_right",
    # brows
    "brow_left_outer", "brow_left_inner", "brow_right_inner", "brow_right_outer",
    # eyes (left = image left)
    "eye_left_outer", "eye_left_inner", "eye_left_top", "eye_left_bottom", "eye_left_center",
    "eye_right_inner", "eye_right_outer", "eye_right_top", "eye_right_bottom", "eye_right_center",
    # nose
    "nose_bridge", "nose_tip", "nostril_left", "nostril_right",
    # mouth
    "mouth_left", "mouth_right", "lip_upper", "lip_lower", "lip_upper_inner", "lip_lower_inner",
)
KP = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
HAND_REGIONS: tuple[str, ...] = ("cheek_left", "cheek_right", "chin", "mouth", "forehead")

# Canonical face layout (face half-height = 1): where the face centre sits in the image and how big a unit is.
FACE_CENTER = (0.5, 0.47)       # (u, v) of the canonical origin at tx = ty = 0
FACE_UNIT = 0.28                # image widths per canonical unit at scale = 1
_N_CONTOUR = 64                 # contour samples (multiple of 8: the five contour keypoints are samples)


# ----------------------------------------------------------------------------------------------------------------
# parameter sampling
# ----------------------------------------------------------------------------------------------------------------
_SKIN = np.array([[255, 226, 204], [241, 194, 167], [224, 172, 138], [198, 134, 96], [160, 104, 72],
                  [120, 78, 54], [92, 60, 44]], np.float64)
_HAIR = np.array([[20, 16, 14], [60, 40, 28], [110, 72, 40], [170, 120, 60], [225, 195, 120], [160, 60, 30],
                  [150, 150, 155], [230, 230, 225], [60, 80, 160], [170, 50, 120]], np.float64)
_IRIS = np.array([[70, 45, 25], [110, 75, 40], [60, 110, 160], [80, 120, 80], [40, 30, 25], [120, 130, 140]],
                 np.float64)
HAIR_STYLES = ("short", "long", "buzz", "curly", "side_part", "bun")
BG_STYLES = ("gradient", "stripes", "blobs", "tiles", "room")


def _rgb(x) -> list[int]:
    return [int(v) for v in np.clip(np.round(x), 0, 255)]


def sample_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Identity parameters (JSON-serialisable dict): everything that does not change within a person's clips."""
    u = rng.uniform
    skin = _SKIN[rng.integers(len(_SKIN))] * u(0.92, 1.05) * (1 + rng.normal(0, 0.025, 3))
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3)
    bg = rng.uniform(40, 235, 3)
    bg2 = np.clip(bg + rng.normal(0, 45, 3), 0, 255)
    lip = np.clip(skin * np.array([0.85, 0.55, 0.55]) + np.array([25, 0, 5]) + rng.normal(0, 8, 3), 0, 255)
    return {
        "face_rx": float(u(0.66, 0.82)),        # face half-width (half-height = 1)
        "jaw": float(u(0.05, 0.38)),            # 0 = round chin, larger = pointed / narrow jaw
        "skin": _rgb(skin),
        "hair": _rgb(hair),
        "hair_style": HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
        "hair_volume": float(u(0.08, 0.22)),
        "hairline": float(u(-0.62, -0.45)),     # y of the fringe's lower edge
        "fringe_wave": float(u(0.0, 0.08)),
        "part": float(u(-0.4, 0.4)),
        "eye_sep": float(u(0.28, 0.36)),        # eye centre |x|
        "eye_y": float(u(-0.12, 0.0)),
        "eye_w": float(u(0.14, 0.19)),          # eye half-width
        "eye_h": float(u(0.075, 0.1)),         # eye opening half-height
        "iris_r": float(u(0.06, 0.075)),
        "iris": _rgb(_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 8, 3)),
        "brow_y": float(u(-0.34, -0.26)),
        "brow_w": float(u(0.15, 0.21)),
        "brow_thick": float(u(0.025, 0.05)),
        "brow_arch": float(u(0.01, 0.06)),
        "brow_color": _rgb(np.clip(hair * 0.7, 0, 255) if rng.random() < 0.7 else hair * 0.4),
        "nose_len": float(u(0.22, 0.32)),       # nose tip y
        "nose_w": float(u(0.08, 0.13)),
        "mouth_y": float(u(0.5, 0.6)),
        "mouth_w": float(u(0.2, 0.28)),
        "lip_up": float(u(0.03, 0.055)),
        "lip_low": float(u(0.04, 0.07)),
        "lip": _rgb(lip),
        "ear": float(u(0.16, 0.22)),
        "blush": float(u(0.0, 0.35)),
        "shirt": _rgb(rng.uniform(20, 235, 3)),
        "bg": _rgb(bg),
        "bg2": _rgb(bg2),
        "bg_style": BG_STYLES[int(rng.integers(len(BG_STYLES)))],
        "bg_seed": int(rng.integers(2**31 - 1)),
    }


def _smooth(rng: np.random.Generator, T: int, amp: float, knot_every: float = 8.0, offset: float = 0.0):
    """A smooth random curve: a uniform cubic B-spline (C², inside its control points' range) through random
    control values in ``offset ± amp``, one every ~``knot_every`` frames."""
    m = max(1, int(math.ceil((T - 1) / knot_every))) + 3          # control points; m − 3 segments
    ctrl = rng.uniform(-amp, amp, m) + offset
    u = np.arange(T) * ((m - 3) / max(T - 1, 1))
    j = np.minimum(u.astype(np.int64), m - 4)
    s = u - j
    b = np.stack([(1 - s) ** 3, 3 * s**3 - 6 * s**2 + 4, -3 * s**3 + 3 * s**2 + 3 * s + 1, s**3]) / 6.0
    return sum(b[i] * ctrl[j + i] for i in range(4))


def _blink_curve(rng: np.random.Generator, T: int, fps: float) -> np.ndarray:
    """Blinks: 0–2 (more for long clips) short raised-cosine pulses, value 1 = eyes closed."""
    out = np.zeros(T)
    n = int(rng.poisson(0.35 * T / fps + 0.5))
    for _ in range(n):
        c, w = rng.uniform(0, T - 1), rng.uniform(1.5, 3.0)
        t = np.arange(T)
        out = np.maximum(out, np.where(np.abs(t - c) < w, 0.5 + 0.5 * np.cos(np.pi * (t - c) / w), 0.0))
    return out


def _talk_curve(rng: np.random.Generator, T: int, fps: float) -> np.ndarray:
    """Mouth opening while talking: a syllable-rate oscillation (2–5 Hz) under a slow envelope."""
    t = np.arange(T) / fps
    f, phi = rng.uniform(2.0, 5.0), rng.uniform(0, 2 * np.pi)
    env = np.clip(_smooth(rng, T, 0.6, 10, offset=0.45), 0.0, 1.0) if rng.random() < 0.85 else np.zeros(T)
    osc = 0.5 + 0.5 * np.sin(2 * np.pi * f * t + phi) + rng.normal(0, 0.08, T)
    return np.clip(env * osc, 0.0, 1.0)


def sample_motion(rng: np.random.Generator, num_frames: int, hand: bool = False, fps: float = 25.0,
                  motion_scale: float = 1.0) -> dict[str, Any]:
    """Motion parameters of one clip (JSON-serialisable): per-frame pose / expression curves and an optional hand.

    Curves are stored per frame, so a caller can edit them (e.g. add a known displacement to ``pose.tx``).
    ``motion_scale`` multiplies the head-pose amplitudes ``(yaw, pitch, roll, t_x, t_y, s − 1)`` of ``m_t`` (the
    yaw offset included): 1.0 is the original distribution, bit for bit (the random draws are the same for every
    scale, so a clip at scale k is the scale-1 clip with k× the head motion); expressions and the hand are not
    scaled. Bounds grow linearly: |yaw| ≤ 0.52·k rad, |pitch| ≤ 0.22·k, |roll| ≤ 0.2·k, |t| ≤ 0.05·k image widths,
    |s − 1| ≤ 0.08·k; k ≈ 2–2.5 keeps the face in frame and readable (k = 3 reaches near-profile yaw).
    """
    T = int(num_frames)
    if T < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    k = float(motion_scale)
    if not (k >= 0.0 and math.isfinite(k)):
        raise ValueError(f"motion_scale must be a finite number >= 0, got {motion_scale}")
    pose = {
        "yaw": _smooth(rng, T, 0.4 * k, 10, offset=rng.uniform(-0.12, 0.12) * k),
        "pitch": _smooth(rng, T, 0.22 * k, 10),
        "roll": _smooth(rng, T, 0.2 * k, 12),
        "tx": _smooth(rng, T, 0.05 * k, 12),
        "ty": _smooth(rng, T, 0.035 * k, 12),
        "scale": _smooth(rng, T, 0.08 * k, 14, offset=1.0),
    }
    expr = {
        "mouth_open": _talk_curve(rng, T, fps),
        "smile": np.clip(_smooth(rng, T, 0.6, 12, offset=rng.uniform(-0.1, 0.4)), -0.4, 1.0),
        "blink": _blink_curve(rng, T, fps),
        "brow": np.clip(_smooth(rng, T, 0.8, 9), -1.0, 1.0),
        "gaze_x": _smooth(rng, T, 0.6, 10),
        "gaze_y": _smooth(rng, T, 0.3, 10),
    }
    motion: dict[str, Any] = {
        "num_frames": T,
        "fps": float(fps),
        "pose": {k: [float(x) for x in v] for k, v in pose.items()},
        "expression": {k: [float(x) for x in v] for k, v in expr.items()},
        "hand": None,
    }
    if hand:
        region = HAND_REGIONS[int(rng.integers(len(HAND_REGIONS)))]
        # direction the fingers point (image angle, radians): the arm comes in from the matching image border
        base = {"cheek_left": 0.35, "cheek_right": np.pi - 0.35, "chin": -np.pi / 2 + 0.25,
                "mouth": -np.pi / 2 - 0.2, "forehead": 0.25}[region]
        if region == "forehead" and rng.random() < 0.5:
            base = np.pi - 0.25
        t_touch = rng.uniform(0.2, 0.45) * (T - 1)
        t_leave = rng.uniform(0.75, 1.3) * (T - 1)
        t = np.arange(T, dtype=np.float64)

        def ramp(x):
            x = np.clip(x, 0.0, 1.0)
            return x * x * (3 - 2 * x)

        approach = ramp(t / max(t_touch, 1e-6)) if t_touch > 0 else np.ones(T)
        leave = ramp((t - t_leave) / max(0.25 * T, 1.0))
        p0 = rng.uniform(0.0, 0.3)
        progress = p0 + (1 - p0) * approach - 0.7 * leave
        pat = 0.04 * np.sin(2 * np.pi * rng.uniform(1.0, 3.0) * t / fps + rng.uniform(0, 6.3)) * (progress > 0.9)
        motion["hand"] = {
            "region": region,
            "direction": float(base + rng.uniform(-0.25, 0.25)),
            "size": float(rng.uniform(0.85, 1.1)),               # palm + finger length, in face units
            "spread": float(rng.uniform(0.0, 0.25)),             # finger fan (radians)
            "mirror": bool(rng.random() < 0.5),                  # which side the thumb is on
            "progress": [float(x) for x in np.clip(progress + pat, 0.0, 1.05)],
            "angle": [float(x) for x in _smooth(rng, T, 0.12, 10)],
        }
    return motion


def neutral_motion(num_frames: int = 1, fps: float = 25.0, **overrides: float) -> dict[str, Any]:
    """A motion with every curve at its neutral value (frontal, centred, closed mouth, eyes open, no hand).

    ``overrides`` set constant curves by name, e.g. ``neutral_motion(3, yaw=0.3, mouth_open=1.0)``.
    """
    T = int(num_frames)
    pose = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, "tx": 0.0, "ty": 0.0, "scale": 1.0}
    expr = {"mouth_open": 0.0, "smile": 0.0, "blink": 0.0, "brow": 0.0, "gaze_x": 0.0, "gaze_y": 0.0}
    for k, v in overrides.items():
        if k in pose:
            pose[k] = float(v)
        elif k in expr:
            expr[k] = float(v)
        else:
            raise KeyError(f"unknown motion curve {k!r}; pose: {list(pose)}, expression: {list(expr)}")
    return {"num_frames": T, "fps": float(fps), "pose": {k: [v] * T for k, v in pose.items()},
            "expression": {k: [v] * T for k, v in expr.items()}, "hand": None}


def _as_dict(p: Mapping[str, Any] | str) -> dict[str, Any]:
    return json.loads(p) if isinstance(p, (str, bytes)) else dict(p)


# ----------------------------------------------------------------------------------------------------------------
# geometry: canonical 3-D points, projection
# ----------------------------------------------------------------------------------------------------------------
def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) · Rx(pitch) · Ry(yaw) (x right, y down, z towards the camera)."""
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def pose_affine(motion: Mapping[str, Any] | str, t: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-frame projection of canonical 3-D points to pixels: ``x = A @ X + c`` (A: 2×3, c: 2).

    Same for every identity: identity A performing clip B's motion uses B's (A_t, c_t) on A's own geometry.
    """
    m = _as_dict(motion)
    p = {k: float(v[t]) for k, v in m["pose"].items()}
    s = FACE_UNIT * p["scale"] * resolution
    A = s * rotation(p["yaw"], p["pitch"], p["roll"])[:2]
    c = np.array([(FACE_CENTER[0] + p["tx"]) * resolution - 0.5, (FACE_CENTER[1] + p["ty"]) * resolution - 0.5])
    return A, c


def _contour(idp: Mapping[str, Any], open_: float, n: int = _N_CONTOUR) -> np.ndarray:
    """Face outline (n×3), t = 0 at image right, t = π/2 at the chin; the jaw narrows and drops with mouth opening."""
    t = np.arange(n) * (2 * np.pi / n)
    low = np.clip(np.sin(t), 0, None)
    x = idp["face_rx"] * np.cos(t) * (1 - idp["jaw"] * low**2)
    y = np.sin(t) + 0.12 * open_ * low**2
    return np.stack([x, y, np.zeros(n)], 1)


@functools.lru_cache(maxsize=None)
def _lin01(n: int) -> np.ndarray:
    s = np.linspace(0, 1, n)[:, None]
    s.flags.writeable = False
    return s


def _curve(a: np.ndarray, b: np.ndarray, bulge: np.ndarray, n: int = 9) -> np.ndarray:
    """Quadratic Bézier from a to b through control point a/2 + b/2 + bulge (n points, 3-D)."""
    s = _lin01(n)
    ctrl = 0.5 * (a + b) + 2 * bulge          # the curve's midpoint is (a + b)/2 + bulge
    return (1 - s) ** 2 * a + 2 * s * (1 - s) * ctrl + s**2 * b


def face_geometry(idp: Mapping[str, Any], expr: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Every drawn shape in canonical 3-D (units of the face half-height), for one frame's expression.

    Keypoints are picked from these arrays (``["keypoints"]``, K×3), so they are exactly the drawn vertices.
    """
    op, sm, bl, br = (float(expr["mouth_open"]), float(expr["smile"]), float(expr["blink"]), float(expr["brow"]))
    gx, gy = float(expr.get("gaze_x", 0.0)), float(expr.get("gaze_y", 0.0))
    g: dict[str, np.ndarray] = {}
    P = lambda x, y, z: np.array([x, y, z], np.float64)  # noqa: E731

    rx = idp["face_rx"]
    g["contour"] = _contour(idp, op)
    # ears (behind the face plane) and neck
    ey = idp["eye_y"]
    for side, sgn in (("left", -1), ("right", 1)):
        t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        g[f"ear_{side}"] = np.stack([sgn * (rx * 0.97) + 0.55 * idp["ear"] * np.cos(t),
                                     ey + 0.12 + idp["ear"] * np.sin(t), np.full(20, -0.25)], 1)
    nw = rx * 0.55
    g["neck"] = np.array([[-nw, 0.4, -0.3], [nw, 0.4, -0.3], [nw * 1.05, 1.6, -0.3], [-nw * 1.05, 1.6, -0.3]])

    # hair: back volume (behind the face) and fringe (over the forehead)
    hv, hl, style = idp["hair_volume"], idp["hairline"], idp["hair_style"]
    t = np.linspace(np.pi, 2 * np.pi, 25)
    cap = np.stack([(rx + hv) * np.cos(t), -0.05 + (1.0 + hv) * np.sin(t), np.full(25, -0.2)], 1)
    if style == "long":
        g["hair_back"] = np.concatenate([cap, [[rx + hv * 1.3, 1.3, -0.2], [-(rx + hv * 1.3), 1.3, -0.2]]])
    elif style == "buzz":
        g["hair_back"] = cap * np.array([0.99, 0.99, 1]) + np.array([0, 0.02, 0])
    elif style == "curly":
        g["hair_back"] = cap * np.array([1.12, 1.1, 1]) + np.array([0, 0.05, 0])
    elif style == "bun":
        bt = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        g["hair_bun"] = np.stack([0.3 * np.cos(bt), -1.12 + 0.26 * np.sin(bt), np.full(20, -0.3)], 1)
        g["hair_back"] = cap
    else:
        g["hair_back"] = cap
    if style != "buzz":
        t = np.linspace(np.pi + 0.12, 2 * np.pi - 0.12, 21)       # along the top of the contour
        top = np.stack([rx * np.cos(t) * 1.02, 1.02 * np.sin(t) - 0.01, np.full(21, 0.02)], 1)
        xs = np.linspace(top[-1, 0], top[0, 0], 21)              # lower edge, right → left
        part = idp["part"] if style == "side_part" else 0.0
        wave = idp["fringe_wave"] * np.sin(np.linspace(0, 6 * np.pi, 21))
        ys = hl + wave + (0.25 * part * (xs / rx) if part else 0.0) + 0.06 * (xs / rx) ** 2
        g["fringe"] = np.concatenate([top, np.stack([xs, ys, np.full(21, 0.05)], 1)])

    # eyes: almond (outer/inner corners, lids), iris (gaze), lid covers
    kp: dict[str, np.ndarray] = {}
    open_eye = 1.0 - np.clip(bl, 0, 1)
    for side, sgn in (("left", -1), ("right", 1)):
        cx, w, h = sgn * idp["eye_sep"], idp["eye_w"], idp["eye_h"]
        outer, inner = P(cx + sgn * w, ey + 0.01, 0.2), P(cx - sgn * w, ey, 0.22)
        up = _curve(outer, inner, P(0, -1.25 * h * open_eye - 0.004, 0.02))
        lo = _curve(outer, inner, P(0, 0.75 * h * open_eye + 0.004, 0.02))
        g[f"eye_{side}"] = np.concatenate([up, lo[::-1][1:-1]])
        iris_c = P(cx + gx * 0.4 * w, ey + 0.004 + gy * 0.5 * h, 0.24)
        g[f"iris_{side}"] = iris_c
        cover_h = idp["iris_r"] * 1.6 + 0.02
        g[f"lid_up_{side}"] = np.concatenate(
            [up, _curve(inner + P(-sgn * 0.03, 0, 0), outer + P(sgn * 0.03, 0, 0), P(0, -cover_h, 0))])
        g[f"lid_lo_{side}"] = np.concatenate(
            [lo, _curve(inner + P(-sgn * 0.03, 0, 0), outer + P(sgn * 0.03, 0, 0), P(0, cover_h, 0))])
        g[f"lidline_{side}"] = up
        kp[f"eye_{side}_outer"], kp[f"eye_{side}_inner"] = outer, inner
        kp[f"eye_{side}_top"], kp[f"eye_{side}_bottom"] = up[len(up) // 2], lo[len(lo) // 2]
        kp[f"eye_{side}_center"] = iris_c
        # brows: raise / lower with `brow`, inner end moves most
        by = idp["brow_y"] - 0.06 * br
        b_out, b_in = P(cx + sgn * idp["brow_w"], by + 0.02 - 0.01 * br, 0.18), P(cx - sgn * idp["brow_w"] * 0.9,
                                                                                    by - 0.015 * br, 0.21)
        g[f"brow_{side}"] = _curve(b_in, b_out, P(0, -idp["brow_arch"] - 0.02 * br, 0.02), n=7)
        kp[f"brow_{side}_outer"], kp[f"brow_{side}_inner"] = b_out, b_in

    # nose: bridge to tip (depth 0.5 at the tip), nostrils
    nl, nw_ = idp["nose_len"], idp["nose_w"]
    bridge, tip = P(0, ey, 0.28), P(0, nl, 0.5)
    g["nose_shade"] = np.array([[-0.025, ey + 0.04, 0.3], [0.025, ey + 0.04, 0.3], [nw_ * 0.9, nl + 0.02, 0.36],
                                [0, nl + 0.05, 0.42], [-nw_ * 0.9, nl + 0.02, 0.36]])
    g["nose_base"] = _curve(P(-nw_, nl - 0.01, 0.34), P(nw_, nl - 0.01, 0.34), P(0, 0.055, 0.1), n=9)
    nos_l, nos_r = P(-nw_ * 0.5, nl + 0.025, 0.4), P(nw_ * 0.5, nl + 0.025, 0.4)
    g["nostrils"] = np.stack([nos_l, nos_r])
    kp.update(nose_bridge=bridge, nose_tip=tip, nostril_left=nos_l, nostril_right=nos_r)

    # mouth: corners rise and widen with smile; jaw drops the lower lip with mouth_open
    my, mw = idp["mouth_y"], idp["mouth_w"] * (1 + 0.12 * sm)
    cy = my - 0.05 * sm
    ml, mr = P(-mw, cy, 0.22), P(mw, cy, 0.22)
    gap = 0.17 * np.clip(op, 0, 1)
    up_in = _curve(ml, mr, P(0, my - cy - 0.004, 0.06), n=11)
    lo_in = _curve(ml, mr, P(0, my - cy + gap + 0.004 + 0.02 * sm, 0.06), n=11)
    up_out = _curve(ml, mr, P(0, my - cy - idp["lip_up"] - 0.004, 0.07), n=11)
    up_out[len(up_out) // 2, 1] += 0.35 * idp["lip_up"]                      # cupid's bow
    lo_out = _curve(ml, mr, P(0, my - cy + gap + idp["lip_low"] + 0.02 * sm, 0.07), n=11)
    g["lips"] = np.concatenate([up_out, lo_out[::-1][1:-1]])
    g["mouth_in"] = np.concatenate([up_in, lo_in[::-1][1:-1]])
    teeth_h = np.minimum(0.05, 0.55 * (lo_in[:, 1] - up_in[:, 1]))
    teeth_lo = up_in.copy()
    teeth_lo[:, 1] += teeth_h
    g["teeth"] = np.concatenate([up_in[2:-2], teeth_lo[2:-2][::-1]])
    g["lipline"] = 0.5 * (up_in + lo_in)
    kp.update(mouth_left=ml, mouth_right=mr, lip_upper=up_out[len(up_out) // 2], lip_lower=lo_out[len(lo_out) // 2],
              lip_upper_inner=up_in[len(up_in) // 2], lip_lower_inner=lo_in[len(lo_in) // 2])
    # blush
    for side, sgn in (("left", -1), ("right", 1)):
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        g[f"blush_{side}"] = np.stack([sgn * 0.42 + 0.13 * np.cos(t), 0.3 + 0.07 * np.sin(t), np.full(16, 0.2)], 1)

    # contour keypoints are contour samples
    c = g["contour"]
    q = _N_CONTOUR // 8
    kp.update(contour_right=c[0], jaw_right=c[q], chin=c[2 * q], jaw_left=c[3 * q], contour_left=c[4 * q])
    g["keypoints"] = np.stack([kp[n] for n in KEYPOINT_NAMES])
    # hand target points (canonical)
    g["targets"] = {"cheek_left": P(-0.45, 0.3, 0.15), "cheek_right": P(0.45, 0.3, 0.15), "chin": P(0, 0.95, 0.05),
                    "mouth": P(0, my, 0.3), "forehead": P(0, -0.62, 0.1)}
    return g


# ----------------------------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------------------------
def _ip(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32).reshape(-1, 2)


def _poly(img, pts, color, aa=True):
    cv2.fillPoly(img, [_ip(pts)], color, cv2.LINE_AA if aa else cv2.LINE_8, SHIFT)


def _line(img, pts, color, thick, aa=True, closed=False):
    cv2.polylines(img, [_ip(pts)], closed, color, max(1, int(round(thick))), cv2.LINE_AA if aa else cv2.LINE_8,
                  SHIFT)


def _disc(img, c, r, color, aa=True):
    cv2.circle(img, tuple(int(v) for v in _ip(c)[0]), max(1, int(round(r * _ONE))), color, -1,
               cv2.LINE_AA if aa else cv2.LINE_8, SHIFT)


def _shade(c, f):
    return tuple(int(v) for v in np.clip(np.asarray(c, np.float64) * f, 0, 255))


def render_background(idp: Mapping[str, Any], size: int) -> np.ndarray:
    """Per-identity static background (size×size×3 uint8), geometry relative to the image so any size matches."""
    rng = np.random.default_rng(int(idp["bg_seed"]))
    a, b = np.asarray(idp["bg"], np.float64), np.asarray(idp["bg2"], np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    style = idp["bg_style"]
    if style == "gradient":
        ang = rng.uniform(0, np.pi)
        w = np.clip(0.5 + (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)), 0, 1)
    elif style == "stripes":
        ang, f = rng.uniform(0, np.pi), rng.uniform(3, 8)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * f * (np.cos(ang) * xx + np.sin(ang) * yy))
        w = 0.35 + 0.3 * w
    elif style == "tiles":
        n = int(rng.integers(3, 7))
        w = ((np.floor(xx * n * 0.999) + np.floor(yy * n * 0.999)) % 2) * 0.5 + 0.25 * yy
    elif style == "room":
        horizon = rng.uniform(0.55, 0.8)
        w = np.where(yy > horizon, 0.9, 0.1 + 0.2 * xx)
    else:  # blobs
        w = np.zeros((size, size))
        for _ in range(10):
            cx, cy, r, v = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3), rng.uniform(-1, 1)
            w += v * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        w = 0.5 + 0.35 * np.tanh(w)
    img = (1 - w)[..., None] * a + w[..., None] * b
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _hand_shapes(hand: Mapping[str, Any], t: int, tip_target: np.ndarray, unit: float, size: int):
    """Hand + forearm shapes in pixel coordinates: (palm polygon, finger polylines + widths, arm, sleeve)."""
    d_ang = float(hand["direction"]) + float(hand["angle"][t])
    d = np.array([math.cos(d_ang), math.sin(d_ang)])
    n = np.array([-d[1], d[0]]) * (-1 if hand["mirror"] else 1)
    L = float(hand["size"]) * unit                      # palm + fingers length in pixels
    prog = float(hand["progress"][t])
    # palm centre: at full progress the fingers rest on the target region; 1.6 face units back at progress 0
    centre = tip_target - d * (0.3 * L) - d * (1.0 - prog) * 1.6 * unit
    pl, pw = 0.3 * L, 0.27 * L
    tt = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    sq = np.sign(np.cos(tt)) * np.abs(np.cos(tt)) ** 0.6, np.sign(np.sin(tt)) * np.abs(np.sin(tt)) ** 0.6
    palm = centre + np.outer(pl * sq[0], d) + np.outer(pw * sq[1], n)
    fingers = []
    spread = float(hand["spread"])
    for i, (off, ln) in enumerate(zip((-0.75, -0.25, 0.25, 0.75), (0.36, 0.44, 0.42, 0.32))):
        a = d_ang + spread * off
        fd = np.array([math.cos(a), math.sin(a)])
        base = centre + d * (pl * 0.75) + n * (off * pw * 0.85)
        fingers.append((np.stack([base, base + fd * (ln * L * 0.55), base + fd * (ln * L)]), 0.13 * L))
    ta = math.atan2(*(d * 0.6 + n * 0.8)[::-1])
    td = np.array([math.cos(ta), math.sin(ta)])
    tbase = centre + n * (pw * 0.7) - d * (pl * 0.2)
    fingers.append((np.stack([tbase, tbase + td * 0.2 * L, tbase + td * 0.32 * L]), 0.14 * L))
    wrist = centre - d * (pl * 0.85)
    far = centre - d * (3.0 * size)
    aw = 0.2 * L
    arm = np.stack([wrist + n * aw, wrist - n * aw, far - n * aw * 1.3, far + n * aw * 1.3])
    cuff = wrist - d * (0.45 * L)
    sleeve = np.stack([cuff + n * aw * 1.5, cuff - n * aw * 1.5, far - n * aw * 1.6, far + n * aw * 1.6])
    return palm, fingers, arm, sleeve


def _draw_hand(img, shapes, skin, outline, sleeve_col, px_scale: float, aa=True):
    palm, fingers, arm, sleeve = shapes
    # outline pass (one unified dark silhouette), then the fill pass on top
    ow = max(1.0, 1.2 * px_scale)
    for pts, w in fingers:
        _line(img, pts, outline, w + 2 * ow, aa)
    _poly(img, arm, outline, aa)
    _line(img, arm, outline, 2 * ow, aa, closed=True)
    _line(img, palm, outline, 2 * ow, aa, closed=True)
    _poly(img, arm, skin, aa)
    _poly(img, palm, skin, aa)
    for pts, w in fingers:
        _line(img, pts, skin, w, aa)
    _poly(img, sleeve, sleeve_col, aa)
    _line(img, sleeve, _shade(sleeve_col, 0.7), ow, aa, closed=True)


def _hand_mask(mask, shapes):
    palm, fingers, arm, sleeve = shapes
    _poly(mask, palm, 255, False)
    _poly(mask, arm, 255, False)
    _poly(mask, sleeve, 255, False)
    for pts, w in fingers:
        _line(mask, pts, 255, w, False)


def render_frame(idp: Mapping[str, Any], motion: Mapping[str, Any], t: int, resolution: int,
                 background: np.ndarray | None = None, supersample: int = SUPERSAMPLE):
    """One frame: (RGB uint8 H×W×3, keypoints K×2 float32 in pixels, {"hand", "face"} bool H×W masks)."""
    R, ss = int(resolution), int(supersample)
    S = R * ss
    expr = {k: v[t] for k, v in motion["expression"].items()}
    g = face_geometry(idp, expr)
    A, c = pose_affine(motion, t, R)
    # torso (neck, shirt) follows translation / scale and only part of the head rotation
    pz = {k: float(v[t]) for k, v in motion["pose"].items()}
    At = FACE_UNIT * pz["scale"] * R * rotation(0.3 * pz["yaw"], 0.0, 0.3 * pz["roll"])[:2]

    def proj(X, ss_=ss, body=False):       # canonical → pixel coords of a canvas supersampled by ss_
        x = np.asarray(X, np.float64) @ (At if body else A).T + c
        return (x + 0.5) * ss_ - 0.5

    # project every head shape at once (one matmul), then split back by name
    names = [k for k, v in g.items() if isinstance(v, np.ndarray) and k not in ("neck", "keypoints")]
    parts = [np.atleast_2d(g[k]) for k in names]
    flat = proj(np.concatenate(parts))
    offs = np.cumsum([0] + [len(q) for q in parts])
    pj = {k: flat[offs[i]:offs[i + 1]] for i, k in enumerate(names)}

    if background is None:
        background = render_background(idp, S)
    img = background.copy()
    skin = tuple(int(v) for v in idp["skin"])
    dark = _shade(skin, 0.72)
    unit_ss = FACE_UNIT * pz["scale"] * S          # pixels (supersampled) per canonical unit
    lw = max(1.0, 0.012 * unit_ss)

    # shirt + neck
    shirt = tuple(int(v) for v in idp["shirt"])
    sh = np.array([[-2.2, 2.6, -0.5], [-1.9, 1.45, -0.5], [-0.6, 1.2, -0.5], [0.6, 1.2, -0.5], [1.9, 1.45, -0.5],
                   [2.2, 2.6, -0.5], [2.2, 6.0, -0.5], [-2.2, 6.0, -0.5]])
    _poly(img, proj(sh, body=True), shirt)
    _poly(img, proj(g["neck"], body=True), _shade(skin, 0.85))
    hair = tuple(int(v) for v in idp["hair"])
    if "hair_bun" in g:
        _poly(img, pj["hair_bun"], hair)
    _poly(img, pj["hair_back"], hair)
    if idp["hair_style"] == "curly":
        hb = pj["hair_back"]
        for p in hb[::2]:
            _disc(img, p, 0.12 * unit_ss, hair)
    for side in ("left", "right"):
        e = pj[f"ear_{side}"]
        _poly(img, e, _shade(skin, 0.93))
        _line(img, e, dark, lw, closed=True)
    contour = pj["contour"]
    _poly(img, contour, skin)
    _line(img, contour, dark, lw, closed=True)
    if idp["blush"] > 0.05:
        bl = _shade(np.asarray(skin) * (1 - idp["blush"] * 0.3) + np.array([230, 90, 100]) * idp["blush"] * 0.3, 1)
        for side in ("left", "right"):
            _poly(img, pj[f"blush_{side}"], bl)

    # eyes
    iris = tuple(int(v) for v in idp["iris"])
    for side in ("left", "right"):
        _poly(img, pj[f"eye_{side}"], (245, 245, 240))
        ic = pj[f"iris_{side}"][0]
        _disc(img, ic, idp["iris_r"] * unit_ss, iris)
        _disc(img, ic, idp["iris_r"] * 0.45 * unit_ss, (15, 12, 12))
        _disc(img, ic + np.array([-0.3, -0.3]) * idp["iris_r"] * unit_ss, idp["iris_r"] * 0.18 * unit_ss,
              (250, 250, 250))
        _poly(img, pj[f"lid_up_{side}"], skin)
        _poly(img, pj[f"lid_lo_{side}"], skin)
        _line(img, pj[f"lidline_{side}"], (30, 22, 20), 1.4 * lw)
        _line(img, pj[f"brow_{side}"], tuple(int(v) for v in idp["brow_color"]), idp["brow_thick"] * unit_ss)
    # nose
    _poly(img, pj["nose_shade"], _shade(skin, 0.93))
    _line(img, pj["nose_base"], dark, lw)
    for p in pj["nostrils"]:
        _disc(img, p, 0.022 * unit_ss, _shade(skin, 0.45))
    # mouth
    lip = tuple(int(v) for v in idp["lip"])
    _poly(img, pj["lips"], lip)
    if float(expr["mouth_open"]) > 0.02:
        _poly(img, pj["mouth_in"], (70, 18, 28))
        _poly(img, pj["teeth"], (240, 238, 228))
    _line(img, pj["lipline"], _shade(lip, 0.5), lw)
    # fringe over the forehead
    if "fringe" in g:
        fr = pj["fringe"]
        _poly(img, fr, hair)
        _line(img, fr[21:], _shade(hair, 0.75), lw)

    # masks at output resolution (drawn at ss, area-downscaled, thresholded at 1/2)
    face_m = np.zeros((S, S), np.uint8)
    _poly(face_m, contour, 255, aa=False)
    hand_m = np.zeros((S, S), np.uint8)
    hand = motion.get("hand")
    if hand:
        tgt = proj(g["targets"][hand["region"]][None])[0]
        shapes = _hand_shapes(hand, t, tgt, unit_ss, S)
        _draw_hand(img, shapes, _shade(skin, 0.97), _shade(skin, 0.55), shirt, unit_ss / 40.0)
        _hand_mask(hand_m, shapes)

    kps = (g["keypoints"] @ A.T + c).astype(np.float32)
    if ss > 1:
        img = cv2.resize(img, (R, R), interpolation=cv2.INTER_AREA)
        face_m = cv2.resize(face_m, (R, R), interpolation=cv2.INTER_AREA)
        hand_m = cv2.resize(hand_m, (R, R), interpolation=cv2.INTER_AREA)
    return img, kps, {"hand": hand_m >= 128, "face": face_m >= 128}


def render_clip(identity_params: Mapping[str, Any] | str, motion_params: Mapping[str, Any] | str, resolution: int,
                supersample: int = SUPERSAMPLE):
    """Render a clip: identity A performing a motion (own or another clip's — cross-identity ground truth).

    Returns ``frames`` T×H×W×3 uint8 (RGB), ``keypoints`` T×K×2 float32 (pixels, ``KEYPOINT_NAMES``), and
    ``masks`` ``{"hand": T×H×W bool, "face": T×H×W bool, "keypoints_visible": T×K bool}``; "hand" is the hand
    and forearm (the occluder), "face" the full face region (un-occluded, so it overlaps the hand on contact).
    """
    idp, m = _as_dict(identity_params), _as_dict(motion_params)
    R = int(resolution)
    T = int(m["num_frames"])
    bg = render_background(idp, R * supersample)
    frames = np.empty((T, R, R, 3), np.uint8)
    kps = np.empty((T, len(KEYPOINT_NAMES), 2), np.float32)
    hand = np.zeros((T, R, R), bool)
    face = np.zeros((T, R, R), bool)
    for t in range(T):
        frames[t], kps[t], masks = render_frame(idp, m, t, R, bg, supersample)
        hand[t], face[t] = masks["hand"], masks["face"]
    ij = np.clip(np.round(kps).astype(np.int64), 0, R - 1)
    visible = ~hand[np.arange(T)[:, None], ij[..., 1], ij[..., 0]]
    inside = (kps >= -0.5).all(-1) & (kps <= R - 0.5).all(-1)
    return frames, kps, {"hand": hand, "face": face, "keypoints_visible": visible & inside}
