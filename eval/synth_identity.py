"""A learned SynthFaces identity embedding ``e(x) ∈ S^{d−1}`` for the ``synthid`` face backend (``id_synthid``,
``aed_synthid``, ``id_to_source_synthid``, ``id_to_driver_synthid``, ``id_leakage_synthid``, …; ``eval.faces``).

Why: dlib's HOG detector finds no face in the soft 64² frames a tiny CPU generator produces, so dlib-based identity
leakage is undefined there (``id_leakage_missing_dlib`` = 1). This embedding needs no detector: every frame gets an
embedding (a frame is "missing" only when its pixels are NaN), so ``id_leakage`` = cos(e(x̂_t), e(D_t)) −
cos(e(x̂_t), e(S)) is defined on every frame of SynthFaces cross-identity pairs.

**Valid on SynthFaces protocols only.** The network is trained on SynthFaces renders; on real faces its numbers mean
nothing. "Identity" here is the renderer's face parameters (``sample_identity``: face shape, skin, hair, eyes, brows,
nose, mouth, ...); the scene (background, shirt) is re-drawn for every training view (``use_random_scene``), so the
embedding is trained to ignore it — two renders of one person in front of different walls are the same identity.
Its held-out statistics (same-identity vs different-identity cosine, verification AUC and best-threshold accuracy,
on clean and on degraded (down-/up-sampled, blurred) renders of identities it never saw) are stored beside the
weights and copied into every ``metrics.json`` that uses it: read a leakage difference against the gap between
the same-id and different-id cosines.

Network: conv encoder 64² → 4² (BatchNorm, ReLU), global average ‖ max pooling, linear → ``embed_dim``,
L2-normalised. Training: supervised contrastive loss (Khosla et al. 2020) over batches of ``ids_per_batch``
identities × ``views_per_batch`` views (each view its own pose / expression / hand / scene), temperature τ, with
blur / down-up-sampling / noise / colour jitter so that the soft frames a generator produces stay in distribution.

The default (64²) embedder ships pinned in ``eval/assets/synth_identity/<hash>.pt`` (``<hash>`` = sha256 of
``SynthIdentityConfig``; ``<hash>.json`` holds the config and the held-out statistics; the weights' sha256 goes
into ``metrics.json``); another config is trained on first use (deterministic: seeded renders and initialisation,
fixed steps) and cached at ``$PORTRAITLAB_CACHE/synth_identity/`` (``eval.learned``).
``python -m eval.synth_identity [--resolution 64]`` loads (or trains) and prints them; ``--retrain --root
eval/assets/synth_identity`` re-creates the shipped file (bump ``VERSION`` when the network, its training or the
renderer change).
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

log = logging.getLogger("portraitlab.eval")

VERSION = 1   # bump when the network / training code changes (it is part of the cache hash)

# identity parameters that describe the scene, not the person: re-drawn per view when use_random_scene
SCENE_KEYS = ("bg", "bg2", "bg_style", "bg_seed", "shirt")


@dataclass(frozen=True)
class SynthIdentityConfig:
    resolution: int = 64
    num_train_identities: int = 512
    views_per_identity: int = 4          # renders per identity (own pose / expression / hand / scene each)
    num_val_identities: int = 96
    hand_prob: float = 0.3
    motion_scale: float = 1.5            # head-pose amplitude (×) of the views: wider than the data's 1.0
    use_random_scene: bool = True        # background and shirt re-drawn per view: the embedding must ignore them
    embed_dim: int = 64
    width: int = 24
    steps: int = 400
    ids_per_batch: int = 32
    views_per_batch: int = 2
    temperature: float = 0.1
    lr: float = 3e-3
    seed: int = 0
    use_augment: bool = True             # blur, down-up-sampling, noise, colour jitter (generated frames are soft)
    version: int = VERSION

    def hash(self) -> str:
        return learned.config_hash(self)


KIND = "synth_identity"


PACKAGED_DIR = learned.packaged_dir(KIND)


# ---- network -----------------------------------------------------------------------------------------------------
def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class IdentityNet(nn.Module):
    """N×3×R×R in [0, 1] → N×embed_dim unit vectors."""

    def __init__(self, embed_dim: int = 64, width: int = 24):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 2), _block(w, w),                       # R/2
            _block(w, 2 * w, 2), _block(2 * w, 2 * w),           # R/4
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w),       # R/8
            _block(4 * w, 4 * w, 2))                             # R/16
        self.head = nn.Linear(8 * w, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x * 2 - 1)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], 1)
        return F.normalize(self.head(h), dim=-1)


# ---- data --------------------------------------------------------------------------------------------------------
def render_identities(num_identities: int, views: int, resolution: int, hand_prob: float, motion_scale: float,
                      use_random_scene: bool, seed: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames N×3×R×R float in [0, 1], identity labels N) — ``views`` single-frame renders of each of
    ``num_identities`` fresh identities, each view with its own motion (and scene when ``use_random_scene``)."""
    from datamodules.synthfaces import render_clip, sample_identity, sample_motion

    rng = np.random.default_rng(seed)
    frames, labels = [], []
    it = range(num_identities)
    if progress:
        from toolbox.progress import track   # a bar on a terminal, plain lines with an ETA in a log

        it = track(it, desc=f"rendering {num_identities}×{views} SynthFaces identity views", unit="identities")
    for i in it:
        idp = sample_identity(rng)
        for _ in range(views):
            view = dict(idp)
            if use_random_scene:
                scene = sample_identity(rng)
                view.update({k: scene[k] for k in SCENE_KEYS})
            motion = sample_motion(rng, 1, hand=bool(rng.random() < hand_prob), motion_scale=motion_scale)
            f, _, _ = render_clip(view, motion, resolution)
            frames.append(f[0])
            labels.append(i)
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)
    return x.contiguous(), torch.tensor(labels)


def degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random down-/up-sampling (×1, ×2 or ×4: a low-resolution generator's output scored at protocol size), then
    the landmark locator's blur / colour / noise augmentation (``eval.synth_landmarks._augment``)."""
    from eval.synth_landmarks import _augment

    R = x.shape[-1]
    f = torch.tensor([1, 2, 4])[torch.randint(0, 3, (x.shape[0],), generator=g)]
    out = x.clone()
    for k in (2, 4):
        sel = (f == k).nonzero().flatten()
        if len(sel):
            lo = F.interpolate(x[sel], size=(R // k,) * 2, mode="bilinear", align_corners=False, antialias=True)
            out[sel] = F.interpolate(lo, size=(R, R), mode="bilinear", align_corners=False).clamp(0, 1)
    return _augment(out, g)


def fixed_degrade(x: torch.Tensor) -> torch.Tensor:
    """The held-out 'soft frame' condition: ×2 down-up-sampling then a σ = 1 Gaussian blur (deterministic)."""
    R = x.shape[-1]
    lo = F.interpolate(x, size=(R // 2,) * 2, mode="bilinear", align_corners=False, antialias=True)
    y = F.interpolate(lo, size=(R, R), mode="bilinear", align_corners=False)
    import torchvision.transforms.v2.functional as TF

    return TF.gaussian_blur(y, kernel_size=[5, 5], sigma=[1.0, 1.0]).clamp(0, 1)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out): z N×d unit vectors, labels N."""
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None]) & ~self_mask
    return -(logp.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp_min(1)).mean()


def verification_stats(z: torch.Tensor, labels: torch.Tensor) -> dict:
    """Over all pairs of embeddings: mean same-/different-identity cosine, ROC AUC (Mann–Whitney) and the accuracy
    at the best threshold (balanced over the two pair kinds)."""
    sim = (z @ z.T).double()
    iu = torch.triu_indices(len(z), len(z), 1)
    s = sim[iu[0], iu[1]]
    same = (labels[iu[0]] == labels[iu[1]])
    pos, neg = s[same], s[~same]
    from scipy.stats import rankdata

    ranks = torch.from_numpy(rankdata(s.numpy()))
    auc = float((ranks[same].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
    thr = torch.unique(s)
    if len(thr) > 2000:
        thr = thr[torch.linspace(0, len(thr) - 1, 2000).long()]
    tpr = (pos[None] >= thr[:, None]).double().mean(1)
    tnr = (neg[None] < thr[:, None]).double().mean(1)
    bal = (tpr + tnr) / 2
    best = int(bal.argmax())
    return {"cos_same": float(pos.mean()), "cos_diff": float(neg.mean()), "cos_same_std": float(pos.std()),
            "cos_diff_std": float(neg.std()), "auc": auc, "accuracy": float(bal[best]), "threshold": float(thr[best]),
            "pairs_same": int(len(pos)), "pairs_diff": int(len(neg))}


# ---- training / loading ------------------------------------------------------------------------------------------
@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def train(cfg: SynthIdentityConfig, progress: bool = True) -> tuple[IdentityNet, dict]:
    """Train an embedder from scratch (deterministic); returns (model in eval mode, info with held-out stats)."""
    t0 = time.time()
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        x, y = render_identities(cfg.num_train_identities, cfg.views_per_identity, cfg.resolution, cfg.hand_prob,
                                 cfg.motion_scale, cfg.use_random_scene, cfg.seed, progress=progress)
        xv, yv = render_identities(cfg.num_val_identities, cfg.views_per_identity, cfg.resolution, cfg.hand_prob,
                                   cfg.motion_scale, cfg.use_random_scene, cfg.seed + 1_000_003)
        t_render = time.time() - t0
        model = IdentityNet(cfg.embed_dim, cfg.width)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
        g = torch.Generator().manual_seed(cfg.seed)
        V, P, n_id = cfg.views_per_identity, cfg.ids_per_batch, cfg.num_train_identities
        model.train()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("synth identity"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[loss]}"), disable=not progress, transient=True) as bar:
            task = bar.add_task("train", total=cfg.steps, loss="")
            for step in range(cfg.steps):
                ids = torch.randperm(n_id, generator=g)[:P]
                views = torch.argsort(torch.rand(P, V, generator=g), dim=1)[:, :cfg.views_per_batch]
                idx = (ids[:, None] * V + views).flatten()
                xb = x[idx]
                if cfg.use_augment:
                    xb = degrade(xb, g)
                loss = supcon_loss(model(xb), y[idx], cfg.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(task, advance=1, loss=f"SupCon {loss.item():.3f}")
                if (step + 1) % max(1, cfg.steps // 10) == 0:
                    log.debug("synth identity step %d/%d: loss %.3f (%.0f s)", step + 1, cfg.steps, loss.item(),
                              time.time() - t0)
    model.eval()
    clean = verification_stats(embed(model, xv), yv)
    soft = verification_stats(embed(model, fixed_degrade(xv)), yv)
    info = {"config": asdict(cfg), "hash": cfg.hash(), "heldout_identities": cfg.num_val_identities,
            "heldout_views": int(len(xv)), "heldout": clean, "heldout_degraded": soft,
            "heldout_cos_gap": clean["cos_same"] - clean["cos_diff"],
            "render_seconds": round(t_render, 1), "train_seconds": round(time.time() - t0, 1),
            "torch_threads": torch.get_num_threads()}
    return model, info


def load_or_train(cfg: Optional[SynthIdentityConfig] = None, root: Optional[Path] = None,
                  progress: bool = True) -> tuple[IdentityNet, dict]:
    """The embedder for ``cfg``: shipped (eval/assets), cached, or trained and saved on first use (``eval.learned``)."""
    cfg = cfg or SynthIdentityConfig()

    def fit():
        log.warning("training the SynthFaces identity embedder (%s, first use, a few minutes on 2 CPU cores). "
                    "It is valid on SynthFaces protocols only.", cfg.hash())
        model, info = train(cfg, progress=progress)
        h = info["heldout"]
        log.warning("synth identity embedder: held-out cos same %.3f / different %.3f, AUC %.3f, accuracy %.3f "
                    "(%d unseen identities)", h["cos_same"], h["cos_diff"], h["auc"], h["accuracy"],
                    info["heldout_identities"])
        return model, info

    return learned.load_or_train(KIND, cfg.hash(), lambda: IdentityNet(cfg.embed_dim, cfg.width), fit, root)


class SynthIdentityEmbedder(learned.LearnedNetwork):
    """Callable ``frames N×3×H×W in [0, 1] → N×embed_dim`` unit vectors (frames resized to the trained resolution)."""

    config_cls = SynthIdentityConfig
    load = staticmethod(load_or_train)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        R = self.cfg.resolution
        x = frames.float().to(self.device)
        if tuple(x.shape[-2:]) != (R, R):
            x = F.interpolate(x, size=(R, R), mode="bilinear", align_corners=False,
                              antialias=R < max(x.shape[-2:]))
        return embed(self.model, x.clamp(0, 1), chunk).cpu()


class SynthIdentityFaces:
    """The ``synthid`` face backend for ``eval.faces``: an identity embedding per frame, no detector, no landmarks
    (identity families only: id / aed / id_to_source / id_to_driver / id_leakage / id_leakage_missing). A frame is
    missing only when it contains NaN. SynthFaces protocols only.

    ``embedder``: any callable frames N×3×H×W → N×d (tests inject a small one); default the cached
    :class:`SynthIdentityEmbedder` trained at ``resolution``."""

    name = "synthid"

    def __init__(self, resolution: int = 64, embedder=None, device="cpu"):
        self._resolution, self._device = int(resolution), device
        self._embedder = embedder
        self.facts: dict = {"embedder": "injected", "valid_on": "SynthFaces protocols only"} if embedder else {}
        if embedder is None:
            e = self.embedder
            self.facts.update({"hash": e.info.get("hash"), "weights_sha256": e.info.get("weights_sha256"),
                               "packaged": e.info.get("packaged"), "resolution": e.cfg.resolution,
                               "valid_on": "SynthFaces protocols only",
                               "heldout": e.info.get("heldout"), "heldout_degraded": e.info.get("heldout_degraded")})

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = SynthIdentityEmbedder(SynthIdentityConfig(resolution=self._resolution),
                                                   device=self._device)
        return self._embedder

    def analyze_frames(self, frames: torch.Tensor) -> list:
        """frames N×3×H×W float in [0, 1] → one ``FaceResult`` each (embedding only; empty for NaN frames)."""
        from eval.faces import FaceResult

        frames = frames.detach().float()
        bad = torch.isnan(frames).flatten(1).any(1)
        out = [FaceResult() for _ in range(len(frames))]
        ok = (~bad).nonzero().flatten()
        if len(ok):
            emb = self.embedder(frames[ok]).double().numpy()
            for j, i in enumerate(ok.tolist()):
                out[i] = FaceResult(None, emb[j])
        return out

    def analyze(self, rgb: np.ndarray, need_embedding: bool = True):
        """One H×W×3 uint8 image (the generic backend interface)."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255)[None]
        return self.analyze_frames(x)[0]


def main(argv: Optional[list[str]] = None) -> int:
    return learned.cli(KIND, __doc__.split("\n")[0], SynthIdentityConfig, SynthIdentityEmbedder, argv)


if __name__ == "__main__":
    raise SystemExit(main())
