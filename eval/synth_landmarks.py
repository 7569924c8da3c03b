"""A learned SynthFaces landmark locator ``L(x) ∈ R^{K×2}`` (K = 29 ``KEYPOINT_NAMES``) for ``akd_synthlm``.

``akd_synthlm`` = 1/K Σ_k ‖L_k(x̂_t) − K_t,k‖₂ (pixels at the protocol resolution): the locator run on the generated
frame x̂_t against the ground-truth keypoints K_t the SynthFaces renderer gives for the target frame (when a sample
has no keypoints, against L(x_t) on the reference frame, FOMM's detector-vs-detector AKD). The locator is a small
CNN trained on SynthFaces renders only, so the metric is **valid on SynthFaces protocols only** — on real faces its
output means nothing. Its own held-out error (on fresh renders, against the exact keypoints) is stored beside its
weights and copied into every ``metrics.json`` that uses it: an AKD below that error is noise.

Network (integral regression, Sun et al. 2018): conv encoder 64² → 16² with dilated context, one ×2 decoder step
to a K-channel heatmap at ``resolution/2``, spatial softmax, expected coordinates (soft-argmax) in pixels; trained
with an L1 loss on the coordinates of the renderer's exact keypoints, with blur / noise / colour jitter so that the
soft frames a generator produces stay in distribution.

The locator is part of the protocol, so the default one ships pinned with the repository: ``eval/assets/
synth_landmarks/<hash>.pt`` (+ ``<hash>.json`` with its config and held-out error; ``<hash>`` = sha256 of the
training config ``SynthLandmarkConfig``), and every ``metrics.json`` records the weights' sha256 — two machines
never score AKD with two differently trained locators. Another config (e.g. ``--resolution 128``) is trained on first
use (deterministic: seeded renders and initialisation, a fixed number of steps) and cached at
``$PORTRAITLAB_CACHE/synth_landmarks/<hash>.pt`` (default ``~/.cache/portraitlab``).
``python -m eval.synth_landmarks [--resolution 64] [--retrain --root DIR]`` loads (or trains) and prints the error;
``--retrain --root eval/assets/synth_landmarks`` re-creates the shipped file (bump ``VERSION`` when the network,
its training or the renderer change).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eval import learned

from eval.metrics import Metric

log = logging.getLogger("portraitlab.eval")

VERSION = 1   # bump when the network / training code changes (it is part of the cache hash)


@dataclass(frozen=True)
class SynthLandmarkConfig:
    resolution: int = 64
    num_train_clips: int = 1200       # clips of `frames_per_clip` frames, each a fresh identity and motion
    frames_per_clip: int = 3
    num_val_clips: int = 100
    hand_prob: float = 0.5
    width: int = 24
    steps: int = 900
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    use_augment: bool = True          # blur, noise, colour jitter (generated frames are soft)
    version: int = VERSION

    def hash(self) -> str:
        return learned.config_hash(self)


KIND = "synth_landmarks"


def cache_dir() -> Path:
    return learned.cache_dir(KIND)


PACKAGED_DIR = learned.packaged_dir(KIND)


# ---- network -----------------------------------------------------------------------------------------------------
def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LandmarkNet(nn.Module):
    """N×3×R×R in [0, 1] → N×K×2 pixel coordinates (pixel centres at integers, as the renderer's keypoints)."""

    def __init__(self, num_keypoints: int, width: int = 24):
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_block(3, w, stride=2), _block(w, w))                       # R/2
        self.enc2 = nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w))            # R/4
        self.ctx = nn.Sequential(_block(2 * w, 2 * w, dilation=2), _block(2 * w, 2 * w, dilation=4))
        self.dec = nn.Sequential(_block(3 * w, w), nn.Conv2d(w, num_keypoints, 1))             # R/2 heatmaps
        self.stride = 2

    def heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.enc1(x * 2 - 1)
        f2 = self.ctx(self.enc2(f1))
        up = F.interpolate(f2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return self.dec(torch.cat([f1, up], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.heatmaps(x)
        N, K, H, W = h.shape
        p = h.flatten(2).softmax(-1).view(N, K, H, W)
        s = self.stride
        xs = (torch.arange(W, device=x.device, dtype=p.dtype) + 0.5) * s - 0.5
        ys = (torch.arange(H, device=x.device, dtype=p.dtype) + 0.5) * s - 0.5
        return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], -1)


# ---- data --------------------------------------------------------------------------------------------------------
def render_set(num_clips: int, frames_per_clip: int, resolution: int, hand_prob: float, seed: int,
               progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames N×3×R×R float in [0, 1], keypoints N×K×2) of fresh SynthFaces identities and motions."""
    from datamodules.synthfaces import render_clip, sample_identity, sample_motion

    rng = np.random.default_rng(seed)
    frames, kps = [], []
    it = range(num_clips)
    if progress:
        from toolbox.progress import track   # a bar on a terminal, plain lines with an ETA in a log

        it = track(it, desc=f"rendering {num_clips} SynthFaces clips", unit="clips")
    for _ in it:
        idp = sample_identity(rng)
        motion = sample_motion(rng, frames_per_clip, hand=bool(rng.random() < hand_prob))
        f, k, _ = render_clip(idp, motion, resolution)
        frames.append(f)
        kps.append(k)
    x = torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).float().div(255)
    return x.contiguous(), torch.from_numpy(np.concatenate(kps)).float()


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-image gaussian blur σ ∈ [0, 1.2], colour gain / offset jitter and pixel noise (deterministic given g)."""
    N = x.shape[0]
    sig = torch.rand(N, generator=g) * 1.2
    r = 3
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sig[:, None].clamp_min(1e-3) ** 2))
    k = k / k.sum(1, keepdim=True)                                          # N×7
    xp = F.pad(x, (r, r, r, r), mode="replicate")
    # separable blur with a per-image kernel: grouped conv over the N·3 channels
    k_h = k.repeat_interleave(3, 0)[:, None, None, :]
    k_v = k.repeat_interleave(3, 0)[:, None, :, None]
    y = F.conv2d(xp.reshape(1, N * 3, *xp.shape[-2:]), k_h, groups=N * 3)
    y = F.conv2d(y, k_v, groups=N * 3).view_as(x)
    gain = 1 + (torch.rand(N, 3, 1, 1, generator=g) - 0.5) * 0.3
    off = (torch.rand(N, 1, 1, 1, generator=g) - 0.5) * 0.1
    noise = torch.randn(x.shape, generator=g) * (torch.rand(N, 1, 1, 1, generator=g) * 0.03)
    return (y * gain + off + noise).clamp(0, 1)


# ---- training / loading ------------------------------------------------------------------------------------------
def point_error(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean over frames and keypoints of the L2 distance (pixels)."""
    return float((pred - gt).norm(dim=-1).mean())


def train(cfg: SynthLandmarkConfig, progress: bool = True) -> tuple[LandmarkNet, dict]:
    """Train a locator from scratch (deterministic); returns (model in eval mode, info with the held-out error)."""
    from datamodules.synthfaces import KEYPOINT_NAMES

    t0 = time.time()
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        x, kp = render_set(cfg.num_train_clips, cfg.frames_per_clip, cfg.resolution, cfg.hand_prob, cfg.seed,
                           progress=progress)
        xv, kpv = render_set(cfg.num_val_clips, cfg.frames_per_clip, cfg.resolution, cfg.hand_prob,
                             cfg.seed + 1_000_003)
        model = LandmarkNet(len(KEYPOINT_NAMES), cfg.width)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
        g = torch.Generator().manual_seed(cfg.seed)
        model.train()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("synth landmarks"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[err]}"), disable=not progress, transient=True) as bar:
            task = bar.add_task("train", total=cfg.steps, err="")
            for step in range(cfg.steps):
                idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=g)
                xb, kb = x[idx], kp[idx]
                if cfg.use_augment:
                    xb = _augment(xb, g)
                loss = (model(xb) - kb).abs().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(task, advance=1, err=f"L1 {loss.item():.3f} px")
                if (step + 1) % max(1, cfg.steps // 10) == 0:
                    log.debug("synth landmarks step %d/%d: L1 %.3f px (%.0f s)", step + 1, cfg.steps, loss.item(),
                              time.time() - t0)
    model.eval()
    with torch.no_grad():
        pv = torch.cat([model(xv[i:i + 128]) for i in range(0, len(xv), 128)])
    info = {"config": asdict(cfg), "hash": cfg.hash(), "heldout_frames": int(len(xv)),
            "heldout_px": point_error(pv, kpv),
            "heldout_px_median": float((pv - kpv).norm(dim=-1).median()),
            "heldout_px_p95": float((pv - kpv).norm(dim=-1).flatten().quantile(0.95)),
            "train_seconds": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads()}
    return model, info


def load_or_train(cfg: Optional[SynthLandmarkConfig] = None, root: Optional[Path] = None,
                  progress: bool = True) -> tuple[LandmarkNet, dict]:
    """The locator for ``cfg``: shipped (eval/assets), cached, or trained and saved on first use (``eval.learned``)."""
    from datamodules.synthfaces import KEYPOINT_NAMES
    cfg = cfg or SynthLandmarkConfig()

    def fit():
        model, info = train(cfg, progress=progress)
        log.info("synth landmark locator: held-out error %.3f px (%d frames)", info["heldout_px"],
                 info["heldout_frames"])
        return model, info

    return learned.load_or_train(KIND, cfg.hash(), lambda: LandmarkNet(len(KEYPOINT_NAMES), cfg.width), fit, root)


class SynthLandmarkLocator(learned.LearnedNetwork):
    """Callable ``frames N×3×R×R → N×K×2`` (pixels) at the resolution it was trained at (frames of another size are
    resized to it and the points scaled back)."""

    config_cls = SynthLandmarkConfig
    load = staticmethod(load_or_train)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        R = self.cfg.resolution
        H, W = frames.shape[-2:]
        x = frames.float().to(self.device)
        if (H, W) != (R, R):
            x = F.interpolate(x, size=(R, R), mode="bilinear", align_corners=False, antialias=True)
        out = torch.cat([self.model(x[i:i + chunk]) for i in range(0, len(x), chunk)]).cpu()
        scale = torch.tensor([W / R, H / R])
        return (out + 0.5) * scale - 0.5


class AKDSynthLandmarks(Metric):
    """``akd_synthlm``: AKD of the locator's keypoints on the generated frames against the target's ground-truth
    keypoints (``fb.keypoints``; without them, against the locator on the reference frames). SynthFaces only.

    ``locator``: any callable frames → N×K×2 (tests); default the cached ``SynthLandmarkLocator`` trained at the
    protocol resolution (trained on first use, ~2 min on 2 CPU cores)."""

    name = "akd_synthlm"
    standin = False
    needs_target = False

    def __init__(self, resolution: int, locator=None, device="cpu"):
        self._resolution, self._device = int(resolution), device
        self._locator = locator
        self.facts: dict = {"locator": "injected"} if locator is not None else {}
        if locator is None:
            self._facts_from(self.locator)

    def _facts_from(self, loc: "SynthLandmarkLocator") -> None:
        self.facts.update({"hash": loc.info.get("hash"), "weights_sha256": loc.info.get("weights_sha256"),
                           "packaged": loc.info.get("packaged"), "heldout_px": loc.info.get("heldout_px"),
                           "resolution": loc.cfg.resolution, "valid_on": "SynthFaces protocols only"})

    @property
    def locator(self):
        if self._locator is None:
            self._locator = SynthLandmarkLocator(SynthLandmarkConfig(resolution=self._resolution), device=self._device)
        return self._locator

    def to(self, device):
        self._device = device
        if hasattr(self._locator, "to"):
            self._locator.to(device)
        return self

    def frames(self, fb) -> np.ndarray:
        from eval.metrics import keypoint_distance

        pred = self.locator(fb.pred)
        ref = fb.keypoints if fb.keypoints is not None else self.locator(fb.reference)
        return keypoint_distance(torch.as_tensor(pred).cpu(), torch.as_tensor(ref).cpu())


def main(argv: Optional[list[str]] = None) -> int:
    return learned.cli(KIND, __doc__.split("\n")[0], SynthLandmarkConfig, SynthLandmarkLocator, argv)


if __name__ == "__main__":
    raise SystemExit(main())
