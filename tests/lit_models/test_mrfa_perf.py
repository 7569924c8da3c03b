"""MRFA's speed / memory knobs change how a training step is computed, not what it computes: activation
checkpointing (exact, BatchNorm statistics counted once), the ∞-norm clip and the fused Adam (benchmarks/mrfa.py
measures them against the official code; docs/RESULTS.md)."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from lit_models.mrfa import MRFA
from lit_models.mrfa.module import clip_grad_inf_norm_


@pytest.fixture(scope="module")
def tiny_cfg():
    from experiments.compose import compose

    # 32², 5 scales, every refinement step: MTIA prior (BatchNorm), dense motion, refiner, generator
    return OmegaConf.merge(compose("train", ["model=mrfa_tiny"]).model,
                           {"resolution": 32, "generator": {"num_up_blocks": 4}, "refine_iters": 5})


def _step(cfg, **over):
    """Losses, gradients, buffers after one forward/backward, and the bytes autograd saved for backward."""
    torch.manual_seed(0)
    m = MRFA(OmegaConf.merge(cfg, over)).train()
    g = torch.Generator().manual_seed(1)
    batch = {"source": torch.rand(2, 3, 32, 32, generator=g), "driving": torch.rand(2, 1, 3, 32, 32, generator=g)}
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    seen: set = set()
    saved = [0]

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            saved[0] += t.untyped_storage().nbytes()
        return t

    torch.manual_seed(5)                       # the equivariance transform
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        terms = m.compute_losses(batch)
    m.weighted_total(terms).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return terms, grads, {n: b.clone() for n, b in m.named_buffers()}, saved[0]


def test_activation_checkpointing_is_exact_and_saves_memory(tiny_cfg):
    t0, g0, b0, s0 = _step(tiny_cfg)
    t1, g1, b1, s1 = _step(tiny_cfg, checkpoint_refiner=True, checkpoint_kp_detector=True,
                           checkpoint_generator=True)
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)
    # BatchNorm running statistics and batch counts: updated once per forward, not again by the recomputation
    assert all(torch.equal(b0[k], b1[k]) for k in b0)
    assert s1 < 0.6 * s0, (s0, s1)


@pytest.mark.parametrize("knob", ["checkpoint_refiner", "checkpoint_kp_detector", "checkpoint_generator"])
def test_each_checkpoint_knob_stores_less(tiny_cfg, knob):
    _, g0, _, s0 = _step(tiny_cfg)
    _, g1, _, s1 = _step(tiny_cfg, **{knob: True})
    assert s1 < s0 and all(torch.equal(g0[k], g1[k]) for k in g0)


@pytest.mark.parametrize("scale", [1e-3, 100.0])
def test_inf_norm_clip_is_torch_clip_grad_norm(scale):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in [(10, 3), (7,), (50, 40)]]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for p, q in zip(ps, qs):
        p.grad = torch.randn(p.shape) * scale
        q.grad = p.grad.clone()
    a = torch.nn.utils.clip_grad_norm_(ps, 10.0, norm_type=math.inf)
    b = clip_grad_inf_norm_(qs, 10.0)
    assert torch.equal(a, b)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(ps, qs))
    assert max(q.grad.abs().max() for q in qs) <= 10.0 + 1e-4
    assert (float(b) > 10.0) == (scale > 1)       # the large gradients were scaled, the small ones kept


def test_fused_adam_knob(tiny_cfg):
    torch.manual_seed(0)
    m = MRFA(tiny_cfg)
    assert m.configure_optimizers().defaults["fused"] is True
    torch.manual_seed(0)
    m2 = MRFA(OmegaConf.merge(tiny_cfg, {"optimizer": {"fused": None}}))
    opt1, opt2 = m.configure_optimizers(), m2.configure_optimizers()
    assert not opt2.defaults["fused"]
    for _ in range(3):                       # same update up to float rounding
        for p, q in zip(m.parameters(), m2.parameters()):
            p.grad = torch.sin(p.detach() * 7)
            q.grad = p.grad.clone()
        opt1.step(), opt2.step()
    assert max((p - q).abs().max().item() for p, q in zip(m.parameters(), m2.parameters())) < 1e-6


def test_benchmark_tensor_memory_is_the_peak_of_live_tensors_above_the_start():
    """benchmarks/mrfa.py's CPU memory column that does not depend on the C allocator: the peak of live tensor
    bytes during ``fn``, counted from its start (a tensor alive before it does not count, one freed inside it
    stops counting)."""
    from benchmarks.mrfa import peak_tensor_gib

    held = torch.empty(64 * 2 ** 18)                     # 64 MiB alive before: not part of the peak

    def fn():
        a = torch.empty(32 * 2 ** 18)                    # 32 MiB
        b = torch.empty(16 * 2 ** 18)                    # +16 = 48
        del a                                            # 16
        c = torch.empty(24 * 2 ** 18)                    # +24 = 40 < 48
        return b, c

    assert peak_tensor_gib(fn) * 1024 == pytest.approx(48, abs=0.5)
    assert held.numel()


def test_benchmark_convolution_floor_counts_convolution_kernels_only():
    from benchmarks.mrfa import conv_seconds

    torch.manual_seed(0)
    x = torch.randn(2, 16, 64, 64, requires_grad=True)
    w = torch.randn(32, 16, 3, 3, requires_grad=True)
    conv, total = conv_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1).sum().backward())
    assert 0 < conv <= total and conv / total > 0.5      # the step is almost all convolution
    m = torch.randn(256, 256)
    conv, total = conv_seconds(lambda: [m @ m for _ in range(5)])
    assert conv == 0 and total > 0


def test_lowmem_variant_is_model_mrfa_with_the_checkpoint_knobs():
    """model=mrfa_lowmem changes how the step is computed, not the network: every other key is model=mrfa's."""
    from experiments.compose import compose

    base = OmegaConf.to_container(compose("train", ["model=mrfa"]).model)
    low = OmegaConf.to_container(compose("train", ["model=mrfa_lowmem"]).model)
    changed = {k for k in base.keys() | low.keys() if base.get(k) != low.get(k)}
    assert changed == {"checkpoint_generator", "checkpoint_refiner"}
    assert low["checkpoint_generator"] and low["checkpoint_refiner"] and not low["checkpoint_kp_detector"]


@pytest.mark.parametrize("scale", [0.5, 0.25, 0.125, 1 / 3])
@pytest.mark.parametrize("size", [(64, 64), (33, 47)])
def test_anti_alias_downsampling_computes_only_the_kept_pixels_with_the_same_result(scale, size):
    """The official AntiAliasInterpolation2d blurs the whole image, then keeps every (1/scale)-th pixel
    (F.interpolate nearest); ours convolves with stride 1/scale when it is an integer: the same values and input
    gradients (reference: the official two steps written out here), also on sizes 1/scale does not divide."""
    import torch.nn.functional as F

    from lit_models.mrfa.blocks import AntiAliasInterpolation2d

    m = AntiAliasInterpolation2d(3, scale)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    ref = F.interpolate(F.conv2d(F.pad(x_ref, (m.ka, m.kb, m.ka, m.kb)), m.weight, groups=3),
                        scale_factor=(scale, scale))
    out = m(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    g = torch.rand(ref.shape, generator=torch.Generator().manual_seed(1))
    out.backward(g), ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-6)
