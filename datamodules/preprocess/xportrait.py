"""X-Portrait's official preprocessing (bytedance/X-Portrait ``core/test_xportrait.py`` @ be4d60b:
``x_portrait_data_prep``, ``adjust_driving_video_to_src_image``, ``find_best_frame_byheadpose_fa``,
``extract_local_feature_from_single_img``), given a landmark detector.

* Source and driving are resized full-frame to 512² (``skimage.transform.resize``: the aspect ratio is not kept,
  anti-aliased when shrinking, float64 in [0, 1]).
* Every driving frame is warped onto the source (``cv2.warpAffine``, bilinear, black border) by the affine map of
  three corners of the landmark box (centre ± half the landmark extent) of the driving frame ``best_frame`` onto the
  source's, both located on 256² resizes (``img_as_ubyte``) and doubled for 512².
* The local eye / mouth patches: landmarks of the warped frame resized to 256², centres ``mean(lmk[43:48])``,
  ``mean(lmk[37:42])``, ``mean(lmk[49:68])`` rounded, clipped to [32, 223], ×2 (int), 128² patches of the warped
  512² frame, −1 outside (no face: all −1).

``detect(image uint8 256×256×3) -> 68×2 float array | None`` is face_alignment's FAN
(``FaceAlignment(LandmarksType.TWO_D, flip_input=True).get_landmarks_from_image(img)[0]``, :func:`fan_detector`)
or any stand-in with that contract (tests feed recorded landmarks).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)
Detect = Callable[[np.ndarray], Optional[np.ndarray]]
HD, LD = 512, 256          # official nmd_res, nm_res (landmark grid)
HALF_EDGE = 32             # official halfedge: centres clipped to [32, 255 − 32] on the 256² grid


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """The official ``skimage.transform.resize(img, (size, size))`` (float64 in [0, 1])."""
    from skimage.transform import resize as sk_resize

    return sk_resize(img, (size, size))


def to_ubyte(img: np.ndarray) -> np.ndarray:
    from skimage import img_as_ubyte

    return img_as_ubyte(img)


def best_frame_by_landmarks(source_256: np.ndarray, driving: list[np.ndarray], detect: Detect) -> int:
    """``find_best_frame_byheadpose_fa``: the driving frame whose 256² landmarks are nearest (L1) the source's."""
    src = detect(to_ubyte(resize(source_256, LD)))
    if src is None:
        src = np.zeros((68, 2))
    if len(src) == 0:
        return 0
    best, best_diff = 0, 1e8
    for i, frame in enumerate(driving):
        drv = detect(to_ubyte(resize(frame, LD)))
        drv = np.zeros((68, 2)) if drv is None else drv
        diff = np.sum(np.abs(np.asarray(src) - np.asarray(drv)))
        if diff < best_diff:
            best, best_diff = i, diff
    return best


def landmark_box_points(lmks: np.ndarray) -> np.ndarray:
    """The four corners (centre ± half extent) of a landmark set's box, float32 (the official point order)."""
    c = np.mean(lmks, axis=0)
    e = (np.max(lmks, axis=0) - np.min(lmks, axis=0)) * 0.5
    return np.array([[c[0] - e[0], c[1] - e[1]], [c[0] + e[0], c[1] - e[1]], [c[0] - e[0], c[1] + e[1]],
                     [c[0] + e[0], c[1] + e[1]]]).astype(np.float32)


def align_driving(source: np.ndarray, driving: list[np.ndarray], detect: Detect, best_frame: int = 0,
                  res: int = HD) -> tuple[list[np.ndarray], dict]:
    """``adjust_driving_video_to_src_image`` (the 512² output): the driving frames resized to ``res``² and warped
    onto the source. ``best_frame``: the matching frame (−1: chosen by landmarks; −2: no warp). Returns the frames
    (float64 H×W×3) and facts (best frame, the 2×3 map or None)."""
    import cv2

    plain = lambda: [resize(f, res) for f in driving]  # noqa: E731
    if best_frame == -2:
        return plain(), {"best_frame": -2, "affine": None}
    src = to_ubyte(resize(source[..., :3], LD))
    if best_frame < 0:
        best_frame = best_frame_by_landmarks(src, driving, detect)
    if best_frame >= len(driving):
        raise ValueError(f"best_frame={best_frame}: the driving clip has {len(driving)} frames")
    drv = to_ubyte(resize(driving[best_frame], LD))
    src_l, drv_l = detect(src), detect(drv)
    if src_l is None or drv_l is None:
        log.warning("X-Portrait preprocessing: no face in the %s: driving frames only resized",
                    "source" if src_l is None else f"driving frame {best_frame}")
        return plain(), {"best_frame": best_frame, "affine": None}
    src_p, dst_p = landmark_box_points(src_l), landmark_box_points(drv_l)
    M = cv2.getAffineTransform(dst_p[:3] * 2, src_p[:3] * 2)
    out = [cv2.warpAffine(resize(f, res), M, (res, res)) for f in driving]
    return out, {"best_frame": best_frame, "affine": M}


def patch_centres(frame_hd: np.ndarray, detect: Detect, target_res: int = HD) -> Optional[np.ndarray]:
    """``extract_local_feature_from_single_img``'s centres: 3×2 int (x, y) at ``target_res`` — left eye
    (``lmk[43:48]``), right eye (``lmk[37:42]``), mouth (``lmk[49:68]``) — or None when no face is found.
    ``frame_hd``: the warped frame, H×W×3 float in [0, 1] (float32 as the official tensor)."""
    lmks = detect(to_ubyte(resize(frame_hd, LD)))
    if lmks is None:
        return None
    lmks = np.asarray(lmks)
    out = [(np.clip(np.round(np.mean(lmks[sl], axis=0)), HALF_EDGE, LD - 1 - HALF_EDGE) * (target_res / LD))
           .astype(np.int32) for sl in (slice(43, 48), slice(37, 42), slice(49, 68))]
    return np.stack(out)


def local_image(frame_hd: np.ndarray, centres: Optional[np.ndarray], target_res: int = HD) -> np.ndarray:
    """The official local-control input: the frame inside the three (target_res/4)² patches, 0 outside, then
    ×2 − 1 (so −1 outside; all −1 without a face). H×W×3 float32 in [−1, 1]."""
    frame = frame_hd.astype(np.float32)
    out = np.zeros_like(frame)
    h = target_res // 8
    if centres is not None:
        for x, y in centres:
            out[y - h:y + h, x - h:x + h] = frame[y - h:y + h, x - h:x + h]
    return out * 2 - 1


def official_inputs(source: np.ndarray, driving: list[np.ndarray] | np.ndarray, detect: Detect,
                    best_frame: int = 0, res: int = HD) -> dict:
    """``x_portrait_data_prep``: source (3×res², [0, 1]), aligned driving (T×3×res², [0, 1]), local images
    (T×3×res², [−1, 1]), patch centres (T×3×2 pixels at res, NaN without a face), facts. ``source`` H×W×3(4) uint8,
    ``driving`` T frames H×W×3 uint8, any size."""
    import torch

    driving = list(driving)
    src = resize(source, res)[..., :3]
    frames, facts = align_driving(source, driving, detect, best_frame, res)
    frames32 = [f.astype(np.float32) for f in frames]       # the official float32 tensor of the warped frames
    centres, local = [], []
    for f in frames32:
        c = patch_centres(f, detect, res)
        centres.append(np.full((3, 2), np.nan, np.float32) if c is None else c.astype(np.float32))
        local.append(local_image(f, c, res))
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a))).permute(0, 3, 1, 2)  # noqa: E731
    return {"source": torch.from_numpy(src.astype(np.float32)).permute(2, 0, 1), "driving": to_t(frames32),
            "local": to_t(local), "patch_centres": torch.from_numpy(np.stack(centres)), **facts,
            "no_face_frames": int(sum(c is None or np.isnan(c).any() for c in centres))}


def fan_detector(device: str = "cpu") -> Detect:
    """face_alignment's 2D FAN with its S3FD face detector (the official ``FaceAlignment(LandmarksType.TWO_D,
    flip_input=True)``), weights from ``eval.weights``-registered files ``s3fd`` / ``fan2d`` in torch hub's
    checkpoint cache (face_alignment's own ``load_file_from_url`` location). Fails naming the files when absent."""
    import os
    from pathlib import Path

    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    need = {"s3fd": "s3fd-619a316812.pth", "fan2d": "2DFAN4-11f355bf06.pth.tar"}
    missing = [f for f in need.values() if not (hub / f).is_file()]
    if missing and not os.environ.get("PORTRAITLAB_ALLOW_DOWNLOAD"):
        raise FileNotFoundError(
            f"X-Portrait preprocessing needs face_alignment's weights {', '.join(missing)} in {hub} "
            "(https://www.adrianbulat.com/downloads/python-fan/<file>; `python -m eval.weights fetch s3fd fan2d`); "
            "or preprocess=none")
    import face_alignment

    fa = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, flip_input=True, device=device)

    def detect(img: np.ndarray) -> Optional[np.ndarray]:
        found = fa.get_landmarks_from_image(img, return_landmark_score=False)
        return None if not found else np.asarray(found[0])

    return detect


def dlib_landmarks(frames: np.ndarray) -> Optional[np.ndarray]:
    """dlib's 68 landmarks (pixels) of each frame (T×H×W×3 uint8) → T×68×2 float32; a frame without a face takes
    the previous frame's (the next found one's at the start); None when no frame has a face."""
    from datamodules.face import get_face_detector

    detector = get_face_detector("dlib")
    found: list[Optional[np.ndarray]] = []
    for frame in frames:
        box = detector.largest(frame)
        found.append(None if box is None else detector.landmarks68(frame, box).astype(np.float32))
    known = [f for f in found if f is not None]
    if not known:
        log.warning("no face in the driving clip: local control uses its fixed boxes' centres")
        return None
    last, out = known[0], []
    for f in found:
        last = f if f is not None else last
        out.append(last)
    missing = sum(f is None for f in found)
    if missing:
        log.warning("no face in %d of %d driving frames: their landmarks repeat the nearest found frame's",
                    missing, len(found))
    return np.stack(out)
