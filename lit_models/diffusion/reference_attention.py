"""Reference attention (Animate Anyone's ReferenceNet, X-Portrait's / X-NeMo's appearance reference), as diffusers
attention processors — no ``forward`` is patched.

For every spatial self-attention layer ``l`` (``…attentions.*.transformer_blocks.*.attn1``):

* the ReferenceNet's processor (:class:`ReferenceWriteProcessor`) records its input tokens ``h_ref^l`` (the normed
  hidden states of the clean reference latent) in a shared :class:`ReferenceBank`, then attends as usual;
* the denoiser's processor (:class:`ReferenceReadProcessor`) attends with queries ``Q = W_q h^l`` over keys/values
  of ``[h^l ; h_ref^l]`` (its own tokens concatenated with the reference's), i.e. ``softmax(Q [K; K_ref]^T / √d)``.

Per query row the bank can drop the reference entirely (classifier-free guidance dropout: the reference tokens are
masked out of the softmax, which is exactly plain self-attention) or mask a random fraction of reference tokens
(X-NeMo's reference-feature masking). Temporal (motion-module) attention layers are left untouched.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def is_spatial_self_attention(name: str) -> bool:
    """Processor names of spatial self-attention: ``…attentions.i.transformer_blocks.j.attn1.processor``."""
    return ".attentions." in name and name.endswith("attn1.processor")


class ReferenceBank:
    """Shared state between the ReferenceNet (writer) and the denoiser (reader).

    ``features[name]``: R×M×C reference tokens per layer. ``index``: for each denoiser query row (B·T frames, and
    the CFG copies) the reference row it reads (default: rows split evenly, frames of a clip contiguous).
    ``keep``: per query row, False drops the reference for that row. ``mask_ratio``/``generator``: fraction of
    reference tokens masked out per reference row and layer (training-time reference-feature masking: an exact
    fraction, one draw per reference row shared by its frames; masked tokens are left out of the keys).
    """

    def __init__(self):
        self.features: dict[str, torch.Tensor] = {}
        self.index: Optional[torch.Tensor] = None
        self.keep: Optional[torch.Tensor] = None
        self.mask_ratio: float = 0.0
        self.generator: Optional[torch.Generator] = None
        self._kept: dict[str, torch.Tensor] = {}   # per layer: the kept token indices of this bank (masking)
        self.writing = False

    def clear(self) -> None:
        self.features.clear()
        self.index = self.keep = self.generator = None
        self.mask_ratio = 0.0
        self._kept = {}

    def read(self, name: str, hidden_states: torch.Tensor):
        """(reference tokens R×M'×C — one row per reference, not per query; M' = M less the masked tokens —, row
        index Bq (the reference each query row reads), boolean key mask Bq×M' (rows whose reference is dropped) or
        None) for this layer, or None when nothing is stored. The reader
        projects the R reference rows to keys/values once and gathers the projections (not the tokens): a clip's T
        frames and the guidance copies share one projection."""
        ref = self.features.get(name)
        if ref is None:
            return None
        bq = hidden_states.shape[0]
        index = self.index
        if index is None:
            if bq % ref.shape[0]:
                raise RuntimeError(f"{name}: {bq} query rows do not split over {ref.shape[0]} references; set bank.index")
            index = torch.arange(ref.shape[0], device=ref.device).repeat_interleave(bq // ref.shape[0])
        elif index.shape[0] != bq:
            raise RuntimeError(f"{name}: bank.index has {index.shape[0]} rows, the denoiser runs {bq}")
        mask = None
        if self.mask_ratio > 0:
            # reference-feature masking: each reference row keeps a random subset of round((1 − ratio)·M) tokens.
            # Masked keys are removed rather than masked in the softmax — the same attention over the kept keys,
            # without a key mask and with fewer keys.
            R, M = ref.shape[:2]
            n_keep = max(1, M - int(round(self.mask_ratio * M)))
            kept = self._kept.get(name)
            if kept is None or kept.shape != (R, n_keep):
                # drawn once per written bank and layer: a backward pass with gradient checkpointing recomputes
                # this read and must see the same tokens (the generator has moved on by then)
                u = torch.rand(R, M, generator=self.generator).to(ref.device)
                kept = u.argsort(dim=1)[:, :n_keep].sort(dim=1).values
                self._kept[name] = kept
            ref = ref.gather(1, kept[..., None].expand(R, n_keep, ref.shape[2]))
        if self.keep is not None:
            keep = self.keep.to(ref.device)[:, None]
            mask = keep.expand(bq, ref.shape[1])
        return ref.to(hidden_states.dtype), index, mask


def _attention(attn, query_states: torch.Tensor, kv_states: torch.Tensor, key_mask: Optional[torch.Tensor],
               ref: Optional[torch.Tensor] = None, ref_index: Optional[torch.Tensor] = None):
    """Multi-head SDPA with the layer's own projections; ``key_mask`` is B×Lk boolean (True = attend). With ``ref``
    (R×M×C reference tokens) and ``ref_index`` (B rows → reference row), keys/values are
    ``[W_k kv ; (W_k ref)[ref_index]]`` — equal to projecting ``[kv ; ref[ref_index]]``, with each reference row
    projected once instead of once per query row."""
    b = query_states.shape[0]
    q = attn.to_q(query_states)
    k = attn.to_k(kv_states)
    v = attn.to_v(kv_states)
    if ref is not None:
        k = torch.cat([k, attn.to_k(ref)[ref_index]], dim=1)
        v = torch.cat([v, attn.to_v(ref)[ref_index]], dim=1)
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class _SelfAttentionProcessor:
    """Common shape handling of a self-attention processor (3-D or 4-D hidden states, residual, rescale)."""

    def __init__(self, name: str, bank: ReferenceBank):
        self.name = name
        self.bank = bank

    def extra(self, hidden_states: torch.Tensor):  # -> (R×M×C tokens, B row index, B×M mask | None) or None
        return None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError(f"{self.name}: reference processors serve self-attention without masks only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape4 = hidden_states.shape if hidden_states.ndim == 4 else None
        if shape4 is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        extra = self.extra(hidden_states)
        if extra is None:
            out = _attention(attn, hidden_states, hidden_states, None)
        else:
            ref, index, ref_mask = extra
            key_mask = None
            if ref_mask is not None:
                own = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
                key_mask = torch.cat([own, ref_mask], dim=1)
            out = _attention(attn, hidden_states, hidden_states, key_mask, ref, index)
        if shape4 is not None:
            out = out.transpose(1, 2).reshape(shape4)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class ReferenceWriteProcessor(_SelfAttentionProcessor):
    """ReferenceNet side: store this layer's input tokens ``h_ref^l`` in the bank, then plain self-attention."""

    def extra(self, hidden_states):
        if self.bank.writing:
            self.bank.features[self.name] = hidden_states
        return None


class ReferenceReadProcessor(_SelfAttentionProcessor):
    """Denoiser side: self-attention over ``[h^l ; h_ref^l]`` (plain self-attention when the bank is empty)."""

    def extra(self, hidden_states):
        return self.bank.read(self.name, hidden_states)


def attach_reference_attention(reference_net: nn.Module, denoiser: nn.Module, bank: Optional[ReferenceBank] = None):
    """Install writer processors on the ReferenceNet and reader processors on the denoiser (matching spatial
    self-attention layers by processor name); every other processor is kept. Returns the shared bank."""
    bank = bank or ReferenceBank()
    ref_names = {n for n in reference_net.attn_processors if is_spatial_self_attention(n)}
    den_names = {n for n in denoiser.attn_processors if is_spatial_self_attention(n)}
    if not den_names or ref_names != den_names:
        missing = sorted(den_names ^ ref_names)[:4]
        raise ValueError(f"ReferenceNet and denoiser self-attention layers differ (e.g. {missing}); "
                         "build the ReferenceNet from the denoiser's spatial U-Net")
    for net, cls in ((reference_net, ReferenceWriteProcessor), (denoiser, ReferenceReadProcessor)):
        procs = dict(net.attn_processors)
        for name in ref_names:
            procs[name] = cls(name, bank)
        net.set_attn_processor(procs)
    return bank
