"""InterAnimate: masking confines the interaction update, soft quantization weights sum to 1, λ_ortho changes the
latents' gradient only when > 0, ID tokens change the denoiser's output, it trains (falling loss), region metrics."""
from __future__ import annotations

import pytest
import torch

from lit_models.interanimate.interaction import (InteractionBlock, _spatial_hook, InteractionContext, mean_abs_cosine,
                                                 orthogonality_loss, region_mask_at)
from lit_models.registry import build_model

SMALL = ["model=interanimate_tiny", "model.resolution=16", "model.unet.block_out_channels=[16,32]",
         "model.unet.sample_size=8", "model.motion_channels=[8]", "model.latent_dim=16", "model.num_spatial_latents=8",
         "model.num_temporal_latents=4", "model.use_zero_init=false", "model.num_inference_steps=2"]


@pytest.fixture(scope="module")
def small_model():
    from experiments.compose import compose

    from eval.faces import attach_identity_encoder

    torch.manual_seed(0)
    return attach_identity_encoder(build_model(compose("train", SMALL).model))


def _batch(B=1, T=2, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    hand = torch.zeros(B, T, 1, res, res)
    hand[..., 2:7, 3:9] = 1
    face = torch.zeros(B, T, 1, res, res)
    face[..., 5:13, 4:12] = 1
    return {"source": torch.rand(B, 3, res, res, generator=g), "driving": torch.rand(B, T, 3, res, res, generator=g),
            "masks": {"hand": hand, "face": face}}


def test_soft_quantization_weights_sum_to_one():
    torch.manual_seed(0)
    blk = InteractionBlock(channels=12, latent_dim=8, heads=2, temperature=0.1)
    h, lat = torch.randn(3, 20, 12), torch.randn(5, 8)
    w, lq = blk.quantize(h, lat)
    assert w.shape == (3, 20, 5) and lq.shape == (3, 5, 8)
    assert torch.allclose(w.sum(-1), torch.ones(3, 20), atol=1e-6) and (w >= 0).all()
    # lower temperature -> sharper assignments (higher max weight)
    blk.temperature = 0.01
    w_sharp, _ = blk.quantize(h, lat)
    assert w_sharp.max(-1).values.mean() > w.max(-1).values.mean()


def test_masking_confines_the_update_to_the_region():
    torch.manual_seed(0)
    blk = InteractionBlock(channels=8, latent_dim=8, heads=2, temperature=0.1, use_zero_init=False)
    h = torch.randn(2, 36, 8)
    mask = (torch.rand(2, 36, 1) > 0.5).float()
    out, _ = blk(h, torch.randn(4, 8), mask)
    delta = (out - h).abs().sum(-1, keepdim=True)
    assert (delta[mask == 0] == 0).all()
    assert (delta[mask == 1] > 0).all()
    # through the denoiser hook: a transformer's N×C×H×W output, a full-resolution mask pooled to its 6×6 grid
    ctx = InteractionContext()
    big = torch.zeros(2, 1, 24, 24)
    big[:, :, 4:12, 8:20] = 1
    ctx.mask = big
    hook = _spatial_hook("t", blk, lambda: torch.randn(4, 8), ctx)
    x = torch.randn(2, 8, 6, 6)
    (y,) = hook(None, (), {}, (x,))
    region = region_mask_at(big, (6, 6))
    changed = (y - x).abs().sum(1, keepdim=True) > 0
    assert torch.equal(changed, region > 0)


def test_orthogonality_loss_reference_and_gradient_only_when_positive(small_model, monkeypatch):
    lat = torch.randn(6, 5)
    lh = lat / lat.norm(dim=1, keepdim=True)
    ref = ((lh @ lh.T - torch.eye(6)) ** 2).sum() / 36
    assert torch.allclose(orthogonality_loss(lat), ref, atol=1e-6)
    other = torch.randn(6, 5)
    batched = orthogonality_loss(torch.stack([lat, other]))  # …×n×d: the mean over the rows
    assert torch.allclose(batched, (ref + orthogonality_loss(other)) / 2, atol=1e-6)
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    assert orthogonality_loss(q) < 1e-10 and mean_abs_cosine(q) < 1e-5

    m = small_model
    batch = _batch()

    def grads(lambda_ortho, target):
        monkeypatch.setitem(m.cfg, "lambda_ortho", lambda_ortho)
        monkeypatch.setitem(m.cfg, "ortho_target", target)
        m.zero_grad(set_to_none=True)
        terms = m.compute_losses(batch)
        m.weighted_total(terms).backward()
        return set(terms), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    try:
        keys0, g0 = grads(0.0, "raw")
        keys1, g1 = grads(0.5, "raw")
        keysq, gq = grads(0.5, "quantized")
    finally:
        m.zero_grad(set_to_none=True)
    assert "loss_ortho" not in keys0 and "loss_ortho" in keys1 and "loss_ortho" in keysq  # λ = 0 skips it
    assert g0["spatial_latents"].abs().sum() > 0 and g0["temporal_latents"].abs().sum() > 0  # diffusion reaches L
    # raw: same noise both times (no trainer: step 0), so the difference is exactly λ·∇ortho(L)
    with torch.enable_grad():
        ls = m.spatial_latents.detach().clone().requires_grad_(True)
        (g_ortho,) = torch.autograd.grad(0.5 * orthogonality_loss(ls), ls)
    assert torch.allclose(g1["spatial_latents"] - g0["spatial_latents"], g_ortho, atol=1e-5)
    # quantized: the term reaches the latents and the blocks' feature projection W_f, never the backbone
    blk = next(iter(m.spatial_blocks))
    for name in ("spatial_latents", "temporal_latents", f"spatial_blocks.{blk}.to_feat.weight"):
        assert (gq[name] - g0[name]).abs().max() > 1e-6, name
    backbone = [f"denoiser.{n}" for n, _ in m.denoiser.named_parameters()]
    backbone += [f"reference_net.{n}" for n, _ in m.reference_net.named_parameters()]
    assert all(torch.allclose(gq[n], g0[n], atol=1e-7, rtol=0) for n in backbone if n in g0)
    from hydra.errors import ConfigCompositionException

    from experiments.compose import compose

    with pytest.raises(ConfigCompositionException, match="ortho_target"):   # the schema's enum, at compose time
        compose("train", SMALL + ["model.ortho_target=keys"])


def test_lambda_ortho_changes_the_trained_output_only_through_the_quantized_latents(compose_cfg):
    """At the default zero-initialised W_o: training with λ_ortho > 0 on the quantized latents L̃ (what attention
    reads) decorrelates them and changes the denoiser's output; λ_ortho = 0 does not move L̃ toward orthogonality,
    and the loss on the raw latents L decorrelates L̃ far less (benchmarks/interanimate_ortho.py at full widths)."""
    from benchmarks.interanimate_ortho import probe, synthetic_batch, train

    torch.manual_seed(0)
    m = build_model(compose_cfg("train", SMALL + ["model.use_zero_init=true", "model.use_id_preserver=false"]).model)
    assert m.cfg.ortho_target == "quantized"
    init = {k: v.clone() for k, v in m.state_dict().items()}
    batch = synthetic_batch(1, 2, 16)
    base = probe(m, batch)
    runs = {}
    for key, lam, target in (("zero", 0.0, "quantized"), ("quantized", 0.1, "quantized"), ("raw", 0.1, "raw")):
        m.load_state_dict(init)
        m.cfg.lambda_ortho, m.cfg.ortho_target = lam, target
        train(m, batch, steps=3, lr=2e-3, train_all=True)
        runs[key] = probe(m, batch)
    cos = lambda r: (r["cos_Lq_s"] + r["cos_Lq_t"]) / 2  # noqa: E731
    assert cos(runs["zero"]) >= cos(base) - 1e-3                    # λ = 0: L̃ not pushed toward orthogonality
    assert cos(runs["quantized"]) < cos(base) - 0.03                # λ > 0: it is
    assert cos(runs["zero"]) - cos(runs["quantized"]) > 2 * (cos(runs["zero"]) - cos(runs["raw"]))
    d_out = (runs["quantized"]["eps"] - runs["zero"]["eps"]).abs().mean()
    assert d_out > 1e-4, d_out                                       # the trained output changes with λ
    stats = m.latent_stats()
    assert {"quantized_abs_cos_spatial", "quantized_abs_cos_temporal", "latent_abs_cos_spatial"} <= set(stats)


def test_gradient_checkpointing_gives_the_same_gradients_with_the_quantized_ortho_loss(compose_cfg):
    """Backward's recomputation repeats the interaction blocks (region mask, ortho terms) exactly. Without the
    ReferenceNet: the core clears its reference bank before backward, which checkpointing cannot recompute."""
    from benchmarks.interanimate_ortho import synthetic_batch

    batch = synthetic_batch(1, 2, 16)
    grads = []
    for gc in ("false", "true"):
        torch.manual_seed(0)
        m = build_model(compose_cfg("train", SMALL + ["model.use_reference_net=false", "model.use_id_preserver=false",
                                                      "model.lambda_ortho=1", f"model.gradient_checkpointing={gc}"]).model)
        m.train()
        terms = m.compute_losses(batch)
        assert terms["loss_ortho"] > 0
        m.weighted_total(terms).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "spatial_latents" in grads[0]
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


@torch.no_grad()
def test_id_tokens_change_the_output(small_model):
    m = small_model.eval()
    b = _batch()
    src, drv = m.to_model(b["source"]), m.to_model(b["driving"])
    keep = torch.ones(1, dtype=torch.bool)
    z_t = torch.randn(1, 2, m.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    outs = []
    for seed in (0, 1):
        emb = torch.randn(1, 128, generator=torch.Generator().manual_seed(seed))
        m._pending = {"masks": m.batch_masks(b), "id": (emb, torch.ones(1, dtype=torch.bool))}
        state = m.encode_motion(src, drv, keep)
        m.write_reference(m.encode(src))
        outs.append(m.denoise(z_t, t, state, torch.arange(1), keep))
    m._pending = {}
    m.bank.clear()
    assert state["id_tokens"].shape == (1, 2, m.cfg.num_id_tokens, m.cross_attention_dim)
    assert (outs[0] - outs[1]).abs().mean() > 1e-4
    # the whole sampler (predicted regions, CFG, windows) returns frames in [0, 1] at the input size
    out = m.animate(b["source"], b["driving"], num_inference_steps=1)
    assert out.shape == b["driving"].shape and 0 <= out.min() and out.max() <= 1
    m.train()


def test_trains_with_falling_loss(compose_cfg):
    torch.manual_seed(0)
    # λ_ortho 0.1 (the sweep's "on"): at 0.01 the diffusion steps' change of the features dominates L̃ in 3 steps
    from eval.faces import attach_identity_encoder

    cfg = compose_cfg("train", SMALL + ["model.optimizer.lr=2e-3", "model.lambda_ortho=0.1"])
    m = attach_identity_encoder(build_model(cfg.model))
    m.train()
    opt = m.configure_optimizers()
    batch = _batch(seed=3)
    history = []
    for _ in range(3):  # no trainer attached: global_step stays 0, so every step sees the same noise
        terms = m.compute_losses(batch)
        loss = m.weighted_total(terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    assert history[-1]["loss_diffusion"] < history[0]["loss_diffusion"]
    assert history[-1]["loss_mask"] < history[0]["loss_mask"]
    assert history[-1]["loss_ortho"] < history[0]["loss_ortho"]


def test_region_metrics():
    """The contact-region metrics InterAnimate is scored with (``eval.regions``; the model package has no copy)."""
    from eval.regions import contact_region, masked_l1, masked_ssim

    hand = torch.zeros(1, 1, 32, 32)
    hand[..., 4:14, 4:14] = 1
    face = torch.zeros(1, 1, 32, 32)
    face[..., 12:28, 10:28] = 1
    region = contact_region(hand, face, radius=2)
    assert region.sum() > 0 and region[..., 0:3, :].sum() == 0
    a = torch.rand(1, 3, 32, 32)
    b = a.clone()
    b[..., 0:3, :] = 0  # changes outside the contact region do not count
    assert masked_l1(a, b, region).item() == pytest.approx(0.0, abs=1e-7)
    assert masked_ssim(a, b, region).item() == pytest.approx(1.0, abs=1e-6)
    c = a.clone()
    c[region.expand_as(c) > 0] = 0
    assert masked_l1(a, c, region) > 0.1 and masked_ssim(a, c, region) < 0.9


@pytest.mark.fixtures
def test_dlib_identity_on_real_portrait(real_fixtures):
    from lit_models.imposter.data import load_image
    from eval.faces import IdentityEncoder

    enc = IdentityEncoder("dlib")
    img = load_image(real_fixtures / "portraits" / "astronaut.png", 256)[None]
    emb, found = enc(img)
    assert found.all() and emb.shape == (1, 128) and emb.norm() > 0.1
    blank, found_blank = enc(torch.zeros(1, 3, 64, 64))
    assert not found_blank.any() and blank.abs().sum() == 0


@pytest.mark.fixtures
def test_id_resolution_upsamples_small_sources_for_the_detector(real_fixtures):
    """The tiny model's 32² face crop of a real portrait: no face as given, found once upsampled to id_resolution."""
    from experiments.animate import crop_resize, read_image, square_box
    from eval.faces import IdentityEncoder

    img = read_image(real_fixtures / "portraits" / "astronaut.png")[None]
    small = crop_resize(img, square_box(img, "face"), 32)
    _, found = IdentityEncoder("dlib")(small)
    emb, found_up = IdentityEncoder("dlib", resolution=128)(small)
    assert not bool(found.any()) and bool(found_up.all()) and emb.norm() > 0.1


@pytest.mark.slow
@pytest.mark.fixtures
def test_train_then_animate_real_hand_over_face_clip(real_fixtures, tmp_path):
    """`experiments.train experiment=interanimate_synthfaces debug=fast` then `experiments.animate` on the real
    hand-over-face clip (regions from the trained mask predictor)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PORTRAITLAB_RUNS": str(tmp_path / "runs"), "PORTRAITLAB_DATA": str(tmp_path / "data"),
           "WANDB_MODE": "offline"}
    small = ["data.synth.num_identities=4", "data.synth.num_frames=8", "data.synth.num_cross_pairs=2",
             "evaluate_after_train=false", "data.batch_size=2"]
    subprocess.run([sys.executable, "-m", "experiments.train", "experiment=interanimate_synthfaces", "debug=fast",
                    *small], check=True, env=env, cwd=os.getcwd())
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    out = tmp_path / "anim.mp4"
    subprocess.run([sys.executable, "-m", "experiments.animate", f"ckpt={ckpt}",
                    f"source={real_fixtures / 'portraits' / 'astronaut.png'}",
                    f"driving={real_fixtures / 'clips' / 'hand_over_face_pexels.mp4'}", "max_frames=4",
                    f"out={out}"], check=True, env=env)
    assert out.exists() and out.stat().st_size > 0


def test_identity_encoder_is_injected_not_built_by_the_model(compose_cfg):
    """The model asks for φ (`identity_encoder_request`) and never builds it (lit_models may not import eval): without
    injection `identity` fails naming the fix; `attach_identity_encoder` injects the eval-side dlib encoder (128-d
    as the projector expects); a model without the ID preserver asks for nothing and refuses an encoder."""
    from eval.faces import IdentityEncoder, attach_identity_encoder

    torch.manual_seed(0)
    m = build_model(compose_cfg("train", SMALL + ["model.id_resolution=64"]).model)
    assert m.id_encoder is None and m.identity_encoder_request == {"backend": "dlib", "resolution": 64}
    with pytest.raises(RuntimeError, match=r"use_id_preserver=true.*attach_identity_encoder"):
        m.identity(torch.zeros(1, 3, 16, 16))
    assert attach_identity_encoder(m) is m and isinstance(m.id_encoder, IdentityEncoder)
    assert m.id_encoder.backend_name == "dlib" and m.id_encoder.resolution == 64 and m.identity_encoder_request is None
    emb, found = m.identity(torch.zeros(2, 3, 16, 16))            # a blank image: no face, the zero embedding
    assert emb.shape == (2, 128) and not found.any() and not any("id_encoder" in k for k in m.state_dict())
    calls = []
    m.set_identity_encoder(lambda x: calls.append(x.shape) or (torch.ones(x.shape[0], 128),
                                                               torch.ones(x.shape[0], dtype=torch.bool)))
    assert m.identity(torch.zeros(3, 3, 16, 16))[1].all() and calls == [(3, 3, 16, 16)]
    off = build_model(compose_cfg("train", SMALL + ["model.use_id_preserver=false"]).model)
    assert off.identity_encoder_request is None and attach_identity_encoder(off).id_encoder is None
    with pytest.raises(ValueError, match="use_id_preserver=false"):
        off.set_identity_encoder(IdentityEncoder("dlib"))


def test_animate_draws_from_the_injected_generator(small_model):
    """The shared diffusion core's ``animate`` takes ``generator=`` (InterAnimate passes it through): the same seed
    gives the same clip, another seed another clip, and None equals a generator seeded with ``sample_seed``."""
    b = _batch(T=3)
    run = lambda g: small_model.animate(b["source"], b["driving"], masks=b["masks"], generator=g)  # noqa: E731
    seed = int(small_model.cfg.sample_seed)
    a = run(torch.Generator().manual_seed(seed + 1))
    again = run(torch.Generator().manual_seed(seed + 1))
    other = run(torch.Generator().manual_seed(seed + 2))
    default = small_model.animate(b["source"], b["driving"], masks=b["masks"])
    seeded = run(torch.Generator().manual_seed(seed))
    assert torch.equal(a, again)
    assert (a - other).abs().max() > 1e-4
    assert torch.equal(default, seeded)
