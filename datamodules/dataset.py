"""Samples: a source frame x_s and driving frames x_{d_1..T} of clips, as the batch dict of docs/DESIGN.md.

* ``TrainClipDataset`` — sample ``i`` is a pure function of ``(seed, i)``: ``rng = default_rng([seed, i])`` picks the
  clip, a window of T driving frames (``frame_stride`` apart) and a source frame of the same clip outside the
  window. The training stream is therefore a function of the sample index alone (exact resume; see
  ``ResumableIndexSampler`` in ``datamodules.datamodule``). A clip that fails to decode is warned about and
  replaced by the draw of ``default_rng([seed, i, attempt])`` — never a crash mid-epoch. With ``cross_driving``
  (``data.use_synth_cross_driving``, SynthFaces only) it also carries ``driving_cross``: the same frames' motion
  ``m_t`` rendered on the fly with another training identity, ``I(id', m_t)`` (``SynthCrossDriving``).
* ``EvalClipDataset`` — fixed items: self-reenactment (frame 0 is the source, driving = target = frames
  0, stride, 2·stride, …) and cross-identity pairs (source frame 0 of one clip, driving frames of another,
  ``target`` from SynthFaces' ground-truth render when the pair has one).

Frames are cropped (``crop``: none | center | meta) and resized to ``resolution``² (cv2.INTER_AREA when shrinking,
bilinear when enlarging; ``resolution=None``: native size, the evaluation applies its protocol's resize itself); keypoints and masks from ``root/meta/<stem>.npz`` get the same crop and scale. With
``as_uint8`` images and masks stay uint8 and channels-last (¼ of the bytes between worker and GPU, no transpose on
the CPU); ``batch_to_float`` converts them after the device transfer (the DataModule's ``on_after_batch_transfer``
does, under a Trainer).
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from toolbox.choices import as_choice

from datamodules.config import Crop
from datamodules.layouts import ClipRecord
from datamodules.video import ClipSource, ReaderCache

log = logging.getLogger("portraitlab.data")


# ---------------------------------------------------------------------------------------------------------------
_INV255 = np.float32(1.0 / 255.0)


def _u8_to_unit(a: np.ndarray) -> np.ndarray:
    """uint8 → float32 in [0, 1] in one pass (numpy's fused multiply is ~2× torch's .to().mul_() on CPU)."""
    return np.multiply(a, _INV255, dtype=np.float32)


IMAGE_KEYS = ("source", "driving", "target", "driving_cross")


def _unit_channels_first(v: torch.Tensor) -> torch.Tensor:
    """…×H×W×C uint8 (transport format) → …×C×H×W float32 in [0, 1]."""
    return v.movedim(-1, -3).to(torch.float32).mul_(1.0 / 255.0).contiguous()


def batch_to_float(batch: dict) -> dict:
    """Convert a batch shipped as uint8 channels-last (``transfer_uint8``) to the float32 [0, 1] channels-first
    batch of docs/DESIGN.md, on whatever device it is (cheap on a GPU); ``target`` stays the same tensor as
    ``driving`` when it was. Float batches pass through unchanged."""
    same = batch.get("target") is batch.get("driving")
    for k in IMAGE_KEYS:
        v = batch.get(k)
        if isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and not (k == "target" and same):
            batch[k] = _unit_channels_first(v)
    if same and "target" in batch:
        batch["target"] = batch["driving"]
    masks = batch.get("masks")
    if isinstance(masks, dict):
        batch["masks"] = {k: (_unit_channels_first(v) if v.dtype == torch.uint8 else v) for k, v in masks.items()}
    return batch


# ---------------------------------------------------------------------------------------------------------------
class FrameTransform:
    """Crop box then resize to ``resolution``², applied alike to frames, masks and keypoints (pixels)."""

    def __init__(self, resolution: Optional[int], crop: str = "center", as_uint8: bool = False):
        crop = str(as_choice(Crop, crop, "crop"))
        # None: frames stay at their native (cropped) size; the evaluation resizes them with its protocol's method
        self.resolution = None if resolution is None else int(resolution)
        self.crop = crop
        self.as_uint8 = as_uint8  # ship uint8 (¼ the bytes); ``batch_to_float`` converts after the device transfer

    def box(self, h: int, w: int, meta_box: Optional[Sequence[float]] = None) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in source pixels; may extend past the frame for crop=meta (padded with black)."""
        if self.crop == "none":
            return 0, 0, w, h
        if self.crop == "meta" and meta_box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in meta_box)
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"empty crop box {list(meta_box)}")
            return x0, y0, x1, y1
        # center (and meta without a box: the clip has no .crop.json)
        s = min(h, w)
        x0, y0 = (w - s) // 2, (h - s) // 2
        return x0, y0, x0 + s, y0 + s

    @staticmethod
    def _cut(arr: np.ndarray, box) -> np.ndarray:
        """arr: N×H×W(×C); crop, zero-padding where the box leaves the frame."""
        x0, y0, x1, y1 = box
        h, w = arr.shape[1:3]
        if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
            return arr[:, y0:y1, x0:x1]
        out = np.zeros((arr.shape[0], y1 - y0, x1 - x0, *arr.shape[3:]), arr.dtype)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx1 > sx0 and sy1 > sy0:
            out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[:, sy0:sy1, sx0:sx1]
        return out

    def _resize(self, arr: np.ndarray) -> np.ndarray:
        """N×h×w×C → N×r×r×C; the frames are stacked along channels so cv2 resizes them in one call."""
        import cv2

        n, h, w, c = arr.shape
        r = self.resolution
        if r is None or (h, w) == (r, r):
            return np.ascontiguousarray(arr)
        interp = cv2.INTER_AREA if (h > r or w > r) else cv2.INTER_LINEAR
        # channels per call: OpenCV 5 resizes at most 128 channels (CV_CN_MAX), and INTER_AREA at a non-integer
        # ratio (e.g. 64 → 48) at most 4; resizing is per channel, so chunking does not change the result
        max_cn = 4 if interp == cv2.INTER_AREA and (h % r or w % r) else 128
        per = max(1, max_cn // c)
        outs = []
        for k in range(0, n, per):
            chunk = arr[k:k + per]
            m = chunk.shape[0]
            stacked = np.ascontiguousarray(chunk.transpose(1, 2, 0, 3).reshape(h, w, m * c))
            res = cv2.resize(stacked, (r, r), interpolation=interp)
            outs.append(res.reshape(r, r, m, c).transpose(2, 0, 1, 3))
        return np.ascontiguousarray(np.concatenate(outs) if len(outs) > 1 else outs[0])

    def frames(self, frames: np.ndarray, box, post=None) -> torch.Tensor:
        """N×H×W×3 uint8 → N×3×r×r float32 in [0, 1] (transpose fused into the conversion pass).
        ``as_uint8``: N×r×r×3 uint8, channels last (transport format; ``batch_to_float`` permutes on the device).
        ``post``: applied to the resized N×r×r×3 uint8 frames (the training augmentation)."""
        out = self._resize(self._cut(frames, box))
        if post is not None:
            out = post(out)
        if self.as_uint8:
            return torch.from_numpy(out)
        return torch.from_numpy(_u8_to_unit(out.transpose(0, 3, 1, 2)))

    def masks(self, masks: np.ndarray, box, post=None) -> torch.Tensor:
        """N×H×W (bool / uint8 0-1 or 0-255 / float) → N×1×r×r float32 in [0, 1] (area-averaged: soft edges)."""
        if masks.dtype == np.bool_ or (masks.dtype == np.uint8 and masks.max(initial=0) <= 1):
            m = masks.astype(np.uint8) * np.uint8(255)   # resize in uint8 (1/255 steps), cheaper than float
        elif masks.dtype == np.uint8:
            m = masks
        else:
            m = np.clip(masks, 0, 1).astype(np.float32)
        out = self._resize(self._cut(m[..., None], box))  # N×r×r×1 (the same layout as frames)
        if post is not None:
            out = post(out)
        if m.dtype == np.uint8:
            return torch.from_numpy(out) if self.as_uint8 else torch.from_numpy(_u8_to_unit(out.transpose(0, 3, 1, 2)))
        return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)).astype(np.float32))

    def points(self, pts: np.ndarray, box) -> torch.Tensor:
        """(…, 2) pixel (x, y) in the stored frame → pixels of the resized crop.

        Pixel centres sit at integer coordinates (SynthFaces, dlib, cv2.resize all agree), so the map is
        ``(x + 0.5 - x0) * scale - 0.5``, not ``(x - x0) * scale`` (which would shift by 0.5·(scale - 1) px)."""
        x0, y0, x1, y1 = box
        rx, ry = (x1 - x0, y1 - y0) if self.resolution is None else (self.resolution, self.resolution)
        scale = np.array([rx / (x1 - x0), ry / (y1 - y0)], np.float32)
        origin = np.array([x0, y0], np.float32)
        return torch.from_numpy(((pts.astype(np.float32) + 0.5 - origin) * scale - 0.5).astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
class _ClipDataset(Dataset):
    """Shared decoding: lazily opened readers per worker, meta npz and crop boxes cached per worker."""

    def __init__(self, source: ClipSource, resolution: int, crop: str, as_uint8: bool = False,
                 use_meta: bool = True):
        self.source = source
        self.use_meta = use_meta
        self.transform = FrameTransform(resolution, crop, as_uint8)
        self.readers = ReaderCache(source)
        self._meta_cache: dict[str, Any] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_meta_cache"] = {}
        return state

    def _num_frames(self, rec: ClipRecord) -> int:
        return rec.num_frames or self.readers.get(rec).num_frames

    def _meta(self, rec: ClipRecord) -> Optional[dict]:
        if rec.meta is None or not self.use_meta:
            return None
        if rec.path not in self._meta_cache:
            if len(self._meta_cache) > 64:
                self._meta_cache.clear()
            self._meta_cache[rec.path] = self.source.load_meta(rec)
        return self._meta_cache[rec.path]

    def _box(self, rec: ClipRecord, h: int, w: int):
        meta_box = None
        if self.transform.crop == "meta":
            key = "crop:" + rec.path
            if key not in self._meta_cache:
                self._meta_cache[key] = self.source.load_crop(rec)
            meta_box = self._meta_cache[key]
        return self.transform.box(h, w, meta_box)

    def _load(self, rec: ClipRecord, indices: Sequence[int], with_meta: bool = True, aug=None) -> dict:
        """Decode ``indices`` of ``rec`` → {"frames": N×3×r×r, optional "keypoints", "masks"}; ``aug``
        (``datamodules.augment.AugmentParams``) augments all of them alike."""
        from datamodules import augment

        reader = self.readers.get(rec)
        raw = reader.get_frames(indices)
        h, w = raw.shape[1:3]
        box = self._box(rec, h, w)
        out = {"frames": self.transform.frames(raw, box, post=(lambda a: augment.apply_frames(a, aug)) if aug else None)}
        meta = self._meta(rec) if with_meta else None
        if meta:
            idx = np.asarray(indices)
            if "keypoints" in meta:
                pts = self.transform.points(meta["keypoints"][idx], box)
                if aug is not None:
                    width = self.transform.resolution or (box[2] - box[0])
                    pts = torch.from_numpy(augment.apply_points(pts.numpy(), aug, width))
                out["keypoints"] = pts
            masks = {k[len("masks_"):]: meta[k] for k in meta if k.startswith("masks_")}
            if masks:
                post = (lambda a: augment.apply_masks(a, aug)) if aug else None
                out["masks"] = {k: self.transform.masks(v[idx], box, post=post) for k, v in sorted(masks.items())}
        return out


def _split_source(loaded: dict, n_src: int = 1) -> tuple[dict, dict]:
    """Split a joint decode ``[source] + driving`` into its two parts."""
    src, drv = {}, {}
    for k, v in loaded.items():
        if isinstance(v, dict):
            src[k] = {m: t[:n_src] for m, t in v.items()}
            drv[k] = {m: t[n_src:] for m, t in v.items()}
        else:
            src[k], drv[k] = v[:n_src], v[n_src:]
    return src, drv


def _assemble(src: dict, drv: dict, tgt: Optional[dict], meta: dict, identity: str, mode: str = "self") -> dict:
    """The sample dict. ``target`` is what the output should be: the driving frames themselves (the same tensor) in
    self-reenactment, the ground-truth render in synth_cross, and absent for real cross-identity pairs (no ground
    truth exists: no key, so nothing can score against a stand-in)."""
    sample = {"source": src["frames"][0], "driving": drv["frames"], "identity": identity, "meta": meta}
    if tgt is not None:
        sample["target"] = tgt["frames"]
    elif mode == "self":
        sample["target"] = drv["frames"]
    ref = drv if tgt is None else tgt  # annotations of what the output should show (real cross: the driver's)
    if "keypoints" in ref:
        sample["keypoints"] = ref["keypoints"]
    if "keypoints" in src:
        sample["source_keypoints"] = src["keypoints"][0]
    if "masks" in ref:
        sample["masks"] = ref["masks"]
    return sample


def collate_clips(samples: list[dict]) -> dict:
    """default_collate, except that ``target`` *is* ``driving`` (one tensor) for self-reenactment batches."""
    same = all(s.get("target") is s["driving"] for s in samples)
    if same:
        for s in samples:
            s.pop("target", None)
    batch = default_collate(samples)
    if same:
        batch["target"] = batch["driving"]
    return batch


# ---------------------------------------------------------------------------------------------------------------
def draw_training_frames(rng: np.random.Generator, n: int, num_frames: int, stride: int = 1) -> tuple[int, list[int]]:
    """(source index, T driving indices): a window of T frames ``stride`` apart (the stride shrinks for short clips;
    frames repeat when the clip has fewer than T), and a source frame outside the window when there is one."""
    t = num_frames
    if t > 1:
        stride = max(1, min(stride, (n - 1) // (t - 1))) if n > 1 else 1
    span = (t - 1) * stride + 1
    if span <= n:
        start = int(rng.integers(0, n - span + 1))
        driving = [start + k * stride for k in range(t)]
    else:
        driving = sorted(int(v) for v in rng.integers(0, n, size=t))
    outside = np.setdiff1d(np.arange(n), driving)
    pool = outside if outside.size else np.arange(n)
    source = int(pool[int(rng.integers(pool.size))])
    return source, driving


CROSS_STREAM = 0xC055      # the partner identity's draw: default_rng([seed, i, attempt, CROSS_STREAM])
AUG_STREAM = 0xA06         # the augmentation's draw: default_rng([seed, i, attempt, AUG_STREAM])
ID_STREAM = 0x1D5          # id_sampling: epoch e's identity order, default_rng([seed, e, ID_STREAM]).permutation
PAIR_SAMPLINGS = ("window", "sorted_pair")
SYNTH_CROSS_KEYS = ("identity_params", "motion", "resolution")


class SynthCrossDriving:
    """``driving_cross`` of a SynthFaces training sample: ``I(id', m_t)`` — the driving frames' motion ``m_t`` (the
    clip's pose / expression / hand curves, ``motion`` in its meta) performed by another training identity ``id'``
    (``identity_params`` from the meta of one of its clips), rendered on the fly at the stored resolution.

    ``id'`` is drawn from ``default_rng([seed, index, attempt, CROSS_STREAM])`` among the identities of ``records``
    (the training split: never a val / test identity) other than the sample's own, so the stream stays a pure
    function of ``(seed, index)``. Rendering, not decoding: the frames are the renderer's exact output (no H.264),
    the keypoints its exact ``K_t`` — same pose ``(A_t, c_t)`` as the driving keypoints, ``id'``'s face geometry.
    Measured at 64², T = 2 (one process, shared 2-core CPU): a sample costs ~34 ms with ``driving_cross`` against
    ~15 ms without (render ~7–9 ms per frame); a tiny X-Portrait step on B = 8 takes seconds, so the workers hide it.
    Pre-rendering was not chosen: it would fix a few partners per clip, add a dataset version (re-rendering the
    existing data/), H.264-compress the frames and multiply the disk size, to save ~20 ms per sample.
    """

    max_backgrounds = 32      # per-identity static backgrounds kept per worker (256²: 0.8 MB, 120 ms to draw)

    def __init__(self, source: ClipSource, records: list[ClipRecord], seed: int):
        by_id: dict[str, ClipRecord] = {}
        for r in sorted(records, key=lambda r: r.clip_id):
            by_id.setdefault(r.identity, r)
        if len(by_id) < 2:
            raise ValueError(f"data.use_synth_cross_driving needs >= 2 training identities to render "
                             f"batch['driving_cross'], the training split has {len(by_id)}")
        self.first_clip = by_id
        self.identities = sorted(by_id)
        self.seed = int(seed)
        self.source = source
        self._meta: dict[str, dict] = {}
        self._identity: dict[str, dict] = {}
        self._background: dict[tuple[str, int], np.ndarray] = {}
        self.synth_meta(records[0])       # fail at once, naming the option, on data that is not SynthFaces

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_meta"], state["_identity"], state["_background"] = {}, {}, {}
        return state

    def synth_meta(self, rec: ClipRecord) -> dict:
        """The clip's SynthFaces meta (cached per worker); a clear error when it is not SynthFaces'."""
        if rec.path in self._meta:
            return self._meta[rec.path]
        meta = self.source.load_meta(rec) if rec.meta else None
        missing = [k for k in SYNTH_CROSS_KEYS if meta is None or k not in meta]
        if missing:
            raise ValueError(
                f"data.use_synth_cross_driving=true renders batch['driving_cross'] from SynthFaces ground truth "
                f"(identity_params + per-frame motion in ROOT/meta/<clip>.npz), but {rec.path} has "
                + ("no meta" if meta is None else f"no {', '.join(missing)} in its meta")
                + ": not a SynthFaces dataset (or one rendered before motion was stored: re-render it). Set "
                  "data.use_synth_cross_driving=false (X-Portrait: model.driving_appearance=augment).")
        meta = dict(meta, motion=json.loads(str(meta["motion"])))     # parsed once per clip, not per sample
        if len(self._meta) > 64:
            self._meta.clear()
        self._meta[rec.path] = meta
        return meta

    def partner(self, index: int, attempt: int, identity: str) -> str:
        """The other training identity of sample ``index`` (pure in ``(seed, index, attempt)``)."""
        others = [i for i in self.identities if i != identity]
        rng = np.random.default_rng([self.seed, int(index), int(attempt), CROSS_STREAM])
        return others[int(rng.integers(len(others)))]

    def identity_params(self, identity: str) -> dict:
        if identity not in self._identity:
            self._identity[identity] = json.loads(str(self.synth_meta(self.first_clip[identity])["identity_params"]))
        return self._identity[identity]

    def render(self, rec: ClipRecord, indices: Sequence[int], identity: str) -> tuple[np.ndarray, np.ndarray]:
        """Frames N×R×R×3 uint8 and keypoints N×K×2 (stored-frame pixels) of ``identity`` performing frames
        ``indices`` of ``rec``'s motion."""
        from datamodules.synthfaces.renderer import SUPERSAMPLE, render_background, render_frame

        meta = self.synth_meta(rec)
        motion = meta["motion"]
        R = int(meta["resolution"])
        idp = self.identity_params(identity)
        key = (identity, R)
        if key not in self._background:
            if len(self._background) >= self.max_backgrounds:
                self._background.clear()
            self._background[key] = render_background(idp, R * SUPERSAMPLE)
        frames = np.empty((len(indices), R, R, 3), np.uint8)
        kps = []
        for n, t in enumerate(indices):
            frames[n], kp, _ = render_frame(idp, motion, int(t), R, self._background[key], SUPERSAMPLE)
            kps.append(kp)
        return frames, np.stack(kps)


class TrainClipDataset(_ClipDataset):
    """Sample ``i`` = f(seed, i): clip, driving window and source frame drawn from ``default_rng([seed, i])``;
    with ``cross_driving`` also ``driving_cross`` / ``keypoints_cross`` / ``identity_cross`` (SynthFaces only).

    ``id_sampling`` (official FOMM / MRFA ``FramesDataset(id_sampling=True)`` in a ``DatasetRepeater``): the global
    stream is cut into epochs of ``U · num_repeats`` samples (U training identities); epoch ``e`` visits every
    identity ``num_repeats`` times in the order ``default_rng([seed, e, ID_STREAM]).permutation``, and sample ``i``
    takes one clip of its identity at random. ``pair_sampling="sorted_pair"``: the official training pair (two
    frames drawn with replacement and sorted; source = the first, driving = the second). ``augmentation``
    (``datamodules.augment``): the official flips / colour jitter, one draw per sample from
    ``default_rng([seed, i, attempt, AUG_STREAM])`` applied to the source and driving frames alike."""

    max_attempts = 8

    def __init__(self, source: ClipSource, records: list[ClipRecord], resolution: int, crop: str = "center",
                 num_frames: int = 1, frame_stride: int = 1, seed: int = 0, length: int = 1000,
                 as_uint8: bool = False, use_meta: bool = True, cross_driving: bool = False,
                 id_sampling: bool = False, num_repeats: int = 1, pair_sampling: str = "window",
                 augmentation=None):
        super().__init__(source, resolution, crop, as_uint8, use_meta)
        if not records:
            raise ValueError("no usable training clips")
        if pair_sampling not in PAIR_SAMPLINGS:
            raise ValueError(f"data.pair_sampling={pair_sampling!r} is not one of {', '.join(PAIR_SAMPLINGS)}")
        if pair_sampling == "sorted_pair" and int(num_frames) != 1:
            raise ValueError(f"data.pair_sampling=sorted_pair draws one driving frame; data.num_frames={num_frames}")
        if int(num_repeats) < 1:
            raise ValueError(f"data.num_repeats={num_repeats} must be >= 1")
        self.records = list(records)
        self.num_frames = int(num_frames)
        self.frame_stride = int(frame_stride)
        self.seed = int(seed)
        self.length = int(length)
        self.cross = SynthCrossDriving(source, self.records, self.seed) if cross_driving else None
        self.id_sampling = bool(id_sampling)
        self.num_repeats = int(num_repeats)
        self.pair_sampling = pair_sampling
        from datamodules import augment

        self.augmentation = augmentation if augment.is_active(augmentation) else None
        if self.augmentation is not None and cross_driving:
            raise ValueError("data.augmentation does not apply to driving_cross: turn off one of data.augmentation / "
                             "data.use_synth_cross_driving")
        by_id: dict[str, list[int]] = {}
        for k, r in enumerate(self.records):
            by_id.setdefault(r.identity, []).append(k)
        self.identities = sorted(by_id)
        self.clips_of = [by_id[i] for i in self.identities]
        self._perm: tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):
        state = super().__getstate__()
        state["_perm"] = (-1, None)
        return state

    def identity_position(self, index: int) -> int:
        """id_sampling: position (in ``self.identities``) of sample ``index``'s identity."""
        n = len(self.identities)
        epoch, pos = divmod(int(index), n * self.num_repeats)
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, ID_STREAM]).permutation(n * self.num_repeats))
        return int(self._perm[1][pos]) % n

    def draw(self, index: int, attempt: int = 0) -> tuple[int, int, list[int]]:
        """(clip position, source frame, driving frames) of sample ``index`` (pure; no decoding)."""
        rng = np.random.default_rng([self.seed, int(index)] + ([attempt] if attempt else []))
        if self.id_sampling:
            clips = self.clips_of[self.identity_position(index)]
            c = clips[int(rng.integers(len(clips)))]
        else:
            c = int(rng.integers(len(self.records)))
        n = self._num_frames(self.records[c])
        if self.pair_sampling == "sorted_pair":
            a = np.sort(rng.integers(0, n, size=2))
            return c, int(a[0]), [int(a[1])]
        s, d = draw_training_frames(rng, n, self.num_frames, self.frame_stride)
        return c, s, d

    def augment_params(self, index: int, attempt: int = 0):
        """Sample ``index``'s augmentation draw (None without augmentation)."""
        if self.augmentation is None:
            return None
        from datamodules import augment

        return augment.draw(np.random.default_rng([self.seed, int(index), int(attempt), AUG_STREAM]), self.augmentation)

    def __getitem__(self, index: int) -> dict:
        last_err = None
        for attempt in range(self.max_attempts):
            c, s, d = self.draw(index, attempt)
            rec = self.records[c]
            aug = self.augment_params(index, attempt)
            try:
                loaded = self._load(rec, [s] + d, aug=aug)
            except Exception as e:  # noqa: BLE001 - a bad clip must not end the epoch
                last_err = e
                self.readers.drop(rec)
                warnings.warn(f"training sample {index}: {rec.path} failed to decode ({e}); drawing another clip")
                continue
            src, drv = _split_source(loaded)
            meta = {"clip_id": rec.clip_id, "path": rec.path, "index": int(index), "source_index": s,
                    "frame_indices": torch.tensor(d)}
            if aug is not None:   # the frames as they come out: a time flip swaps source and driving
                meta["time_flip"], meta["horizontal_flip"] = aug.time_flip, aug.horizontal_flip
            sample = _assemble(src, drv, None, meta, rec.identity)
            if self.cross is not None:
                sample.update(self._cross_driving(rec, d, index, attempt))
            return sample
        raise RuntimeError(f"training sample {index}: {self.max_attempts} clips failed to decode") from last_err

    def _cross_driving(self, rec: ClipRecord, indices: list[int], index: int, attempt: int) -> dict:
        """``driving_cross`` (like ``driving``: T×3×H×W, or T×H×W×3 uint8), ``keypoints_cross`` T×K×2 and
        ``identity_cross``, cropped and resized exactly as the driving frames."""
        other = self.cross.partner(index, attempt, rec.identity)
        frames, kps = self.cross.render(rec, indices, other)
        h, w = frames.shape[1:3]
        box = self._box(rec, h, w)
        return {"driving_cross": self.transform.frames(frames, box), "keypoints_cross": self.transform.points(kps, box),
                "identity_cross": other}


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class EvalItem:
    source: ClipRecord
    source_index: int
    driving: ClipRecord
    indices: list[int]
    target: Optional[ClipRecord] = None
    mode: str = "self"


def _interleave_identities(records: list[ClipRecord]) -> list[ClipRecord]:
    """Deterministic order that visits identities round-robin (so max_videos covers many identities)."""
    by_id: dict[str, list[ClipRecord]] = {}
    for r in sorted(records, key=lambda r: r.clip_id):
        by_id.setdefault(r.identity, []).append(r)
    out, k = [], 0
    while len(out) < len(records):
        for ident in sorted(by_id):
            if k < len(by_id[ident]):
                out.append(by_id[ident][k])
        k += 1
    return out


def frame_indices(n: int, num_frames: int, stride: int) -> list[int]:
    """0, stride, 2·stride, … < n; the first ``num_frames`` of them (0 = all)."""
    idx = list(range(0, n, max(1, stride)))
    return idx[:num_frames] if num_frames > 0 else idx


def build_self_items(records: list[ClipRecord], num_frames: int, stride: int, max_videos: int = 0) -> list[EvalItem]:
    recs = _interleave_identities(records)
    if max_videos > 0:
        recs = recs[:max_videos]
    return [EvalItem(r, 0, r, frame_indices(r.num_frames, num_frames, stride), None, "self") for r in recs]


def build_cross_items(pairs: list, num_frames: int, stride: int, max_videos: int = 0,
                      num_frames_of=None) -> list[EvalItem]:
    """Items of cross-identity ``pairs`` (datamodules.pairs.Pair); ``num_frames_of(record)`` counts ad-hoc
    targets that the scan never saw."""
    items = []
    for p in pairs[: max_videos or None]:
        n = p.driving.num_frames or (num_frames_of(p.driving) if num_frames_of else 0)
        if p.target is not None:
            nt = p.target.num_frames or (num_frames_of(p.target) if num_frames_of else n)
            n = min(n, nt)
        items.append(EvalItem(p.source, 0, p.driving, frame_indices(n, num_frames, stride), p.target,
                              "synth_cross" if p.target is not None else "cross"))
    return items


class EvalClipDataset(_ClipDataset):
    """Fixed evaluation items, decoded sequentially (``get_frames`` on increasing indices decodes forward once).

    ``resolution=None`` keeps the frames at their native (cropped) size: the evaluation then applies its protocol's
    ``resize`` itself (``eval.runner``), so no other resize happens on the way to a score."""

    def __init__(self, source: ClipSource, items: list[EvalItem], resolution: Optional[int], crop: str = "center",
                 as_uint8: bool = False, use_meta: bool = True):
        super().__init__(source, resolution, crop, as_uint8, use_meta)
        self.items = list(items)
        has_t = [it.target is not None for it in self.items]
        if any(has_t) and not all(has_t):
            warnings.warn("some cross pairs have a ground-truth target and some do not: targets dropped")
            for it in self.items:
                it.target = None

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """sha256 of what the items read: every clip's path, size and modification time, the frame indices, the
        crop and the resolution. Evaluation results are reused only under the same fingerprint."""
        import hashlib
        import os

        def stat(path: str) -> list:
            try:
                st = os.stat(path)
                return [path, st.st_size, st.st_mtime_ns]
            except OSError:
                return [path, None, None]

        rows = [[stat(it.source.path), it.source_index, stat(it.driving.path), list(map(int, it.indices)),
                 stat(it.target.path) if it.target is not None else None, it.mode] for it in self.items]
        payload = {"items": rows, "crop": self.transform.crop, "resolution": self.transform.resolution}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def lengths(self) -> list[int]:
        return [len(it.indices) for it in self.items]

    def __getitem__(self, index: int) -> dict:
        it = self.items[index]
        try:
            if it.source.path == it.driving.path:
                src, drv = _split_source(self._load(it.driving, [it.source_index] + it.indices))
            else:
                src = self._load(it.source, [it.source_index])
                drv = self._load(it.driving, it.indices)
            tgt = self._load(it.target, it.indices) if it.target is not None else None
        except Exception as e:
            raise RuntimeError(f"eval item {index} ({it.mode}: {it.source.clip_id} <- {it.driving.clip_id}): {e}") from e
        meta = {"clip_id": it.driving.clip_id, "path": it.driving.path, "source_clip_id": it.source.clip_id,
                "source_path": it.source.path, "target_clip_id": it.target.clip_id if it.target else "",
                "mode": it.mode, "index": int(index), "source_index": it.source_index,
                "frame_indices": torch.tensor(it.indices)}
        return _assemble(src, drv, tgt, meta, it.source.identity, mode=it.mode)
