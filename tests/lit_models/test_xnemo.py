"""X-NeMo: the 1-D motion descriptor, its tokens, cross-attention-only injection (the official motion modules, and
the earlier text-context design by name), the reference-motion guidance negative, leakage guards, motion dropout."""
from __future__ import annotations

import contextlib

import pytest
import torch
import yaml

from animate_helpers import animate_entry_point, luma_blocks
from helpers import assert_motion_dropout_drops_the_driving, random_clip

from lit_models.registry import build_model
from lit_models.xnemo.motion_encoder import MotionTokenizer, temporal_lowpass

SHRINK = ["model.resolution=32", "model.unet.sample_size=8", "model.motion_encoder_resolution=16",
          "model.motion_encoder_channels=[8,16]", "model.num_inference_steps=2"]


@pytest.fixture(scope="module")
def xnemo():
    from experiments.compose import compose

    torch.manual_seed(0)
    return build_model(compose("train", ["model=xnemo_tiny", *SHRINK, "model.motion_dim=64"]).model)


@pytest.fixture(scope="module")
def xnemo_text():
    """The text_xattn design (selectable, and what old checkpoints load as): motion tokens as the U-Net's text
    context."""
    from experiments.compose import compose

    torch.manual_seed(0)
    return build_model(compose("train", ["model=xnemo_tiny", *SHRINK, "model.motion_dim=64",
                                         "model.motion_injection=text_xattn"]).model)


@contextlib.contextmanager
def trained_motion_modules(model):
    """Random output projections in the (zero-initialised) motion modules, as after training; restored after."""
    from lit_models.diffusion.motion_cross_attention import MotionThenTemporal

    proj = [m.motion.transformer.proj_out for m in model.denoiser.modules() if isinstance(m, MotionThenTemporal)]
    g = torch.Generator().manual_seed(0)
    try:
        for p in proj:
            p.weight.data.copy_(torch.randn(p.weight.shape, generator=g) * 0.2)
        yield
    finally:
        for p in proj:
            p.weight.data.zero_()


@pytest.mark.parametrize("motion_dim", [16, 64, 512])
def test_motion_dim_sets_descriptor_and_token_shapes(xnemo, motion_dim):
    from lit_models.xnemo.motion_encoder import MotionEncoder

    enc = MotionEncoder(motion_dim, [8, 16], 16)
    tok = MotionTokenizer(motion_dim, 16, 64)
    m = enc(torch.rand(6, 3, 16, 16))
    assert m.shape == (6, motion_dim)
    tokens = tok(m, torch.ones(6, dtype=torch.bool))
    assert tokens.shape == (6, motion_dim // 16, 64)
    # the model itself: descriptor and state follow model.motion_dim = L tokens × d (the motion modules' kv width)
    d = random_clip(B=2, T=3)
    assert xnemo.descriptor(d["driving"]).shape == (2, 3, 64)
    state = xnemo.encode_motion(d["source"], d["driving"], torch.ones(2, dtype=torch.bool))
    assert state["motion_tokens"].shape == (2, 3, 64 // 16, 16)
    assert state["context"].shape == (2, 3, 1, xnemo.cross_attention_dim)
    with pytest.raises(ValueError, match="multiple of motion_token_dim"):
        MotionTokenizer(40, 16, 64)


def test_flatten_pool_sees_where_the_face_is_and_mean_pool_does_not():
    """A blob moved by 8 px (a multiple of the 3 stride-2 stages) inside a flat 64² frame: the mean-pooled E_m gives
    nearly the same descriptor (blind to translation but for border effects: measured 0.6 % change), the flattened one
    a different one (> 100 %) — why ``flatten`` is the default."""
    from lit_models.xnemo.motion_encoder import MotionEncoder

    x = torch.full((2, 3, 64, 64), 0.3)
    x[0, :, 24:30, 28:34] = 0.9
    x[1, :, 32:38, 28:34] = 0.9
    with pytest.raises(ValueError, match="motion_encoder_pool"):
        MotionEncoder(16, [8, 16, 16], 64, pool="max")
    for pool, moves in (("mean", False), ("flatten", True)):
        torch.manual_seed(0)
        enc = MotionEncoder(16, [8, 16, 16], 64, pool=pool).eval()
        with torch.no_grad():
            m = enc(x)
        change = (m[0] - m[1]).abs().max() / m.abs().max()
        assert (change > 0.05) == moves, (pool, float(change))
    # a checkpoint of the other pool fails naming the key to set, not with a bare size mismatch
    with pytest.raises(ValueError, match="motion_encoder_pool=mean"):
        MotionEncoder(16, [8, 16, 16], 64, pool="flatten").load_state_dict(
            MotionEncoder(16, [8, 16, 16], 64, pool="mean").state_dict())


def test_motion_enters_only_through_motion_modules_of_every_level(xnemo):
    """Official layout: a motion cross-attention module (kv width 16) before the temporal module in every layer of
    every down / mid / up block (the attention-free lowest level too); the U-Net's own cross-attention reads the
    reference's image embedding, never the motion; no spatially aligned control."""
    from lit_models.diffusion.motion_cross_attention import MotionThenTemporal

    den = xnemo.denoiser
    blocks = list(den.down_blocks) + [den.mid_block] + list(den.up_blocks)
    for block in blocks:
        mods = list(block.motion_modules)
        assert mods and all(isinstance(m, MotionThenTemporal) for m in mods), type(block).__name__
        assert all(m.motion.transformer.transformer_blocks[0].attn1.to_k.in_features == 16 for m in mods)
    assert xnemo.motion_context.num_modules == sum(len(b.motion_modules) for b in blocks)
    d = random_clip()
    rows = {k: v.flatten(0, 1) for k, v in
            xnemo.encode_motion(d["source"], d["driving"], torch.ones(1, dtype=torch.bool)).items()}
    xnemo.write_reference(xnemo.encode(d["source"]))
    xnemo._keep_reference_rows = torch.ones(2, dtype=torch.bool)
    try:
        ehs, down, mid = xnemo.condition_denoiser(rows, torch.zeros(2, xnemo.latent_channels, 8, 8), torch.zeros(2))
    finally:
        xnemo._keep_reference_rows = None
        xnemo.bank.clear()
    assert down is None and mid is None, "no spatially aligned control"
    assert ehs.shape == (2, 1, xnemo.cross_attention_dim) and torch.equal(ehs, rows["context"])
    assert torch.equal(xnemo.motion_context.tokens, rows["motion_tokens"])
    assert not any("controlnet" in n for n, _ in xnemo.named_modules())


def test_driving_motion_reaches_the_output_only_through_the_motion_modules(xnemo):
    """Zero-initialised motion modules: the driving clip cannot change ε_θ; once their output projections are
    trained (here: random), it does."""
    a, b = random_clip(seed=1), random_clip(seed=2)
    z = torch.randn(1, 2, xnemo.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    t, keep = torch.full((1,), 500), torch.ones(1, dtype=torch.bool)

    def eps(driving):
        with torch.no_grad():
            xnemo.write_reference(xnemo.encode(a["source"]))
            out = xnemo.denoise(z, t, xnemo.encode_motion(a["source"], driving, keep), torch.arange(1), keep)
            xnemo.bank.clear()
        return out

    assert torch.equal(eps(a["driving"]), eps(b["driving"]))
    with trained_motion_modules(xnemo):
        assert (eps(a["driving"]) - eps(b["driving"])).abs().max() > 1e-4


def test_guidance_negative_is_the_references_own_motion_and_drops_the_image_context(xnemo, monkeypatch):
    """Unconditional branch as official: motion tokens = E_m(reference) on every frame; c_img = 0 where the
    reference is dropped (or none was written)."""
    d = random_clip(B=2, T=3)
    keep = torch.tensor([True, False])
    with torch.no_grad():
        state = xnemo.encode_motion(d["source"], d["driving"], keep)
        own = xnemo.motion_tokens_of(d["source"])
        full = xnemo.encode_motion(d["source"], d["driving"], torch.ones(2, dtype=torch.bool))
    assert torch.equal(state["motion_tokens"][0], full["motion_tokens"][0])
    assert all(torch.equal(state["motion_tokens"][1, f], own[1]) for f in range(3))
    assert not torch.equal(full["motion_tokens"][1, 0], own[1])
    rows = {k: v.flatten(0, 1) for k, v in state.items()}
    monkeypatch.setattr(xnemo, "_keep_reference_rows", torch.tensor([True] * 3 + [False] * 3))
    ehs, _, _ = xnemo.condition_denoiser(rows, None, None)
    assert ehs[:3].abs().sum() > 0 and torch.equal(ehs[3:], torch.zeros_like(ehs[3:]))


def test_text_xattn_design_stays_selectable(xnemo_text):
    """``motion_injection=text_xattn``: motion tokens, projected, are the U-Net's text context in every block with
    cross-attention; no motion modules; learned null tokens for guidance."""
    m = xnemo_text
    assert m.motion_context is None
    assert not any(type(x).__name__ == "MotionThenTemporal" for x in m.denoiser.modules())
    d = random_clip()
    rows = {k: v.flatten(0, 1) for k, v in
            m.encode_motion(d["source"], d["driving"], torch.ones(1, dtype=torch.bool)).items()}
    ehs, down, mid = m.condition_denoiser(rows, torch.zeros(2, m.latent_channels, 8, 8), torch.zeros(2))
    assert down is None and mid is None and torch.equal(ehs, rows["tokens"])
    assert ehs.shape == (2, 64 // 16, m.cross_attention_dim)
    tokens = m.motion_tokens(torch.randn(2, 64), torch.tensor([True, False]))
    assert torch.equal(tokens[1], m.motion_tokens.null[0])


def test_zeroed_motion_input_still_runs(xnemo):
    d = random_clip(T=2)
    zero = torch.zeros_like(d["driving"])
    with torch.no_grad():
        loss = xnemo.compute_losses({"source": d["source"], "driving": zero, "target": d["driving"]})["loss_diffusion"]
    assert torch.isfinite(loss)
    out = xnemo.animate(d["source"], zero, num_inference_steps=1)
    assert out.shape == zero.shape and torch.isfinite(out).all()


def test_motion_dropout_really_drops_the_driving_input(xnemo, monkeypatch):
    assert_motion_dropout_drops_the_driving(xnemo, monkeypatch, motion_active=trained_motion_modules)


def test_leakage_guards_are_switches(xnemo, monkeypatch):
    d = random_clip(T=4)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    aug = xnemo.prepare_driving(d, d["driving"], g())
    assert aug.shape == d["driving"].shape and (aug - d["driving"]).abs().mean() > 0.01
    torch.testing.assert_close(aug, xnemo.prepare_driving(d, d["driving"], g()))  # deterministic per step
    assert xnemo.cfg.reference_mask_ratio > 0 and xnemo.reference_mask_ratio() == xnemo.cfg.reference_mask_ratio
    monkeypatch.setitem(xnemo.cfg, "use_driving_augmentation", False)
    monkeypatch.setitem(xnemo.cfg, "use_reference_masking", False)
    assert torch.equal(xnemo.prepare_driving(d, d["driving"], g()), d["driving"])
    assert xnemo.reference_mask_ratio() == 0
    with torch.no_grad():
        raw = xnemo.descriptor(d["driving"])
        monkeypatch.setitem(xnemo.cfg, "use_descriptor_lowpass", True)
        smooth = xnemo.descriptor(d["driving"])
    assert raw.diff(dim=1).abs().mean() > smooth.diff(dim=1).abs().mean()


def test_reference_masking_hides_tokens_in_attention():
    from lit_models.diffusion.reference_attention import ReferenceBank

    bank = ReferenceBank()
    bank.features["l"] = torch.randn(2, 100, 8)
    bank.mask_ratio, bank.generator = 0.25, torch.Generator().manual_seed(0)
    feats = bank.features["l"]
    ref, index, mask = bank.read("l", torch.zeros(6, 5, 8))
    # one row per reference (projected once by the reader; its frames share the draw), the row each query row reads;
    # exactly 25 % of each reference's tokens are left out of the keys (no key mask needed)
    assert ref.shape == (2, 75, 8) and index.tolist() == [0, 0, 0, 1, 1, 1] and mask is None
    kept = [[int((feats[r] == tok).all(-1).nonzero()) for tok in ref[r]] for r in range(2)]
    assert all(k == sorted(set(k)) for k in kept) and kept[0] != kept[1]   # distinct tokens, own draw per reference
    # masking (keys left out) is the same attention as masking the keys in the softmax
    from diffusers.models.attention_processor import Attention

    from lit_models.diffusion.reference_attention import _attention

    attn, h = Attention(8, heads=2, dim_head=4), torch.randn(6, 5, 8)
    key_mask = torch.zeros(6, 105, dtype=torch.bool)
    key_mask[:, :5] = True
    for q in range(6):
        key_mask[q, [5 + i for i in kept[index[q]]]] = True
    want = _attention(attn, h, h, key_mask, feats, index)
    assert torch.allclose(_attention(attn, h, h, None, ref, index), want, atol=1e-5)
    # a dropped reference row (classifier-free guidance) still gets a key mask
    bank.keep = torch.tensor([True, True, True, False, True, True])
    _, _, mask = bank.read("l", torch.zeros(6, 5, 8))
    assert mask.shape == (6, 75) and not mask[3].any() and mask[0].all()


def test_temporal_lowpass_is_a_normalised_gaussian():
    m = torch.zeros(1, 9, 2)
    m[0, 4] = 1.0
    out = temporal_lowpass(m, 1.0)
    assert out.sum(1).allclose(torch.ones(1, 2), atol=1e-5) and out[0, 4, 0] < 1 and out[0, 3, 0] > 0
    const = torch.full((2, 5, 3), 0.7)
    torch.testing.assert_close(temporal_lowpass(const, 2.0), const)
    assert torch.equal(temporal_lowpass(m[:, :1], 1.0), m[:, :1])


def test_motion_dim_sweep_grid():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments/configs/sweep/xnemo_motion_dim.yaml"
    sweep = yaml.safe_load(path.read_text())
    params = sweep["hydra"]["sweeper"]["params"]
    assert str(params["model.motion_dim"]).split(",") == ["16", "64", "256", "512"]
    assert str(params["seed"]).split(",") == ["0", "1"]
    assert sweep["axes"] == ["model.motion_dim"]
    assert sweep["hydra"]["callbacks"]["table"]["_target_"] == "eval.table.SweepTableCallback"


def test_animate_entry_point_on_real_fixtures(xnemo, compose_cfg, real_fixtures, tmp_path, monkeypatch):
    """`experiments.animate` with a freshly saved tiny checkpoint: face crops of the real portrait and clip, the
    model's 32² output written as video, equal (up to H.264) to `animate` called directly on the same crops."""
    written, source, driving = animate_entry_point(xnemo, compose_cfg, real_fixtures, tmp_path)
    assert written.shape == (3, 32, 32, 3)
    direct = xnemo.animate(source, driving)[0].permute(0, 2, 3, 1)
    monkeypatch.setitem(xnemo.cfg, "sample_seed", xnemo.cfg.sample_seed + 1)
    other = xnemo.animate(source, driving)[0].permute(0, 2, 3, 1)
    err = (luma_blocks(written) - luma_blocks(direct)).abs().mean()
    assert err < 0.5 * (luma_blocks(written) - luma_blocks(other)).abs().mean(), err


def test_official_sampling_preset(compose_cfg):
    """``sampling=xnemo_official``: the official DDIM (β_end 0.02, 35 leading steps 953 … 1, ᾱ_prev = 1 at the last
    step), guidance 2.5 with the reference's own motion as negative, 24-frame windows with overlap 4, and the start
    = the blurred reference latent noised to t = 953 — what the sampler is actually given."""
    import torchvision.transforms.v2.functional as TF

    from lit_models.diffusion.sampling import make_sampler, sample_clip

    shrink = [o for o in SHRINK if "num_inference_steps" not in o]
    cfg = compose_cfg("train", ["model=xnemo_tiny", *shrink, "sampling=xnemo_official"]).model
    assert cfg.num_inference_steps == 35 and cfg.set_alpha_to_one and cfg.init_latents == "blurred_reference"
    assert (cfg.guidance_scale, cfg.window_size, cfg.window_overlap, cfg.guidance_negative_motion) == (2.5, 24, 4, "reference")
    assert (cfg.window_schedule, cfg.window_offset_range) == ("uniform", 24)      # randint(0, 23) per step
    s = make_sampler(cfg)
    s.set_timesteps(cfg.num_inference_steps)
    assert s.timesteps[0] == 953 and s.timesteps[-1] == 1 and len(s.timesteps) == 35
    assert s.config.beta_end == 0.02 and s.final_alpha_cumprod == 1.0
    plain = compose_cfg("train", ["model=xnemo_tiny", *shrink]).model
    assert make_sampler(plain).final_alpha_cumprod < 1.0 and plain.init_latents == "noise"
    torch.manual_seed(0)
    model = build_model(cfg)
    z_ref = torch.randn(1, model.latent_channels, 8, 8)
    init = model.initial_latents(z_ref, 3)
    want = TF.gaussian_blur(z_ref, [9, 9], [18.0, 18.0])
    assert init.shape == (1, 3, model.latent_channels, 8, 8) and all(torch.equal(init[:, f], want) for f in range(3))
    assert (init[:, 0] - z_ref).abs().mean() > 0.1                     # it is blurred
    noise, seen = torch.randn_like(init), []

    def denoise(z, t, s0, e):
        seen.append(z.clone())
        return torch.zeros_like(z)

    sample_clip(denoise, noise, make_sampler(cfg), 2, 24, 4, init_clean=init)
    s2 = make_sampler(cfg)
    s2.set_timesteps(2)
    torch.testing.assert_close(seen[0], s2.add_noise(init, noise, s2.timesteps[:1]))


def test_reference_net_reads_the_image_embedding(xnemo):
    """As official, the ReferenceNet's cross-attention context is c_img of the reference (not a learned prompt):
    changing c_img changes the reference tokens the denoiser reads."""
    d = random_clip()
    z = xnemo.encode(d["source"])
    with torch.no_grad():
        ctx = xnemo.reference_context(z, d["source"])
        assert torch.equal(ctx, xnemo.image_context(d["source"]))
        torch.testing.assert_close(xnemo.reference_context(z), ctx)           # latent only: decoded (pixel: exact)
        xnemo.write_reference(z, source=d["source"])
        a = {k: v.clone() for k, v in xnemo.bank.features.items()}
        xnemo.write_reference(z, source=random_clip(seed=5)["source"])
        b = dict(xnemo.bank.features)
        xnemo.bank.clear()
    # the first self-attention layer runs before any cross-attention: only later layers can differ
    assert any((a[k] - b[k]).abs().max() > 1e-6 for k in a)


def test_checkpoint_of_the_earlier_design_still_loads(xnemo_text, tmp_path):
    """A checkpoint of the text_xattn design whose model config has none of the motion-module keys (``_NEW_KEYS``)
    loads as text_xattn."""
    from lit_models.registry import load_model
    from lit_models.xnemo.model import _NEW_KEYS

    hp = {k: v for k, v in dict(xnemo_text.hparams["model"]).items() if k not in _NEW_KEYS}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": xnemo_text.state_dict(), "hyper_parameters": {"model": hp}}, path)
    old = load_model(str(path))
    assert old.cfg.motion_injection == "text_xattn" and old.motion_context is None
    d = random_clip()
    torch.testing.assert_close(old.descriptor(d["driving"]), xnemo_text.eval().descriptor(d["driving"]))
