"""The shared diffusion core: reference attention, temporal layers, guidance dropout, windowed sampling, training.

Models are the real ``model=xnemo_tiny`` config shrunk further (16² pixels → 8² space-to-depth latents) so every
test runs in seconds on a shared CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import random_clip
from lit_models.diffusion.reference_attention import (ReferenceReadProcessor, ReferenceWriteProcessor,
                                                       is_spatial_self_attention)
from lit_models.diffusion.sampling import (blend_windows, condition_keep_masks, make_sampler, sample_clip,
                                           window_spans, window_weights)
from lit_models.registry import build_model

SHRINK = ["model.resolution=32", "model.unet.sample_size=8", "model.motion_encoder_resolution=16",
          "model.motion_encoder_channels=[8,16]", "model.num_inference_steps=2", "model.motion_dim=32"]


def tiny(compose_cfg, *overrides, model="xnemo_tiny"):
    cfg = compose_cfg("train", [f"model={model}", *SHRINK, *overrides])
    torch.manual_seed(0)
    return build_model(cfg.model)


def denoise_once(model, source, driving, keep_reference=True, seed=0):
    """ε_θ for one fixed noisy clip (same z_t, t) given a reference and a driving clip."""
    B, T = driving.shape[:2]
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, model.latent_channels, 8, 8, generator=g)
    t = torch.full((B,), 500)
    keep = torch.full((B,), keep_reference)
    with torch.no_grad():
        model.write_reference(model.encode(source))
        state = model.encode_motion(source, driving, torch.ones(B, dtype=torch.bool))
        out = model.denoise(z, t, state, torch.arange(B), keep)
        model.bank.clear()
    return out


@pytest.fixture(scope="module")
def xnemo(compose_cfg_module):
    m = tiny(compose_cfg_module)
    m.eval()
    return m


@pytest.fixture(scope="module")
def compose_cfg_module():
    from experiments.compose import compose

    return compose


def test_processors_write_and_read_only_spatial_self_attention(xnemo):
    ref_procs = xnemo.reference_net.attn_processors
    den_procs = xnemo.denoiser.attn_processors
    spatial = [n for n in den_procs if is_spatial_self_attention(n)]
    assert spatial and all(isinstance(den_procs[n], ReferenceReadProcessor) for n in spatial)
    assert all(isinstance(ref_procs[n], ReferenceWriteProcessor) for n in spatial)
    temporal = [n for n in den_procs if "motion_modules" in n]
    assert temporal and not any(isinstance(den_procs[n], ReferenceReadProcessor) for n in temporal)
    cross = [n for n in den_procs if n.endswith("attn2.processor")]
    assert cross and not any(isinstance(den_procs[n], ReferenceReadProcessor) for n in cross)


def test_reference_tokens_reach_the_denoiser_attention(xnemo):
    a, b = random_clip(seed=1), random_clip(seed=2)
    out_a = denoise_once(xnemo, a["source"], a["driving"])
    out_b = denoise_once(xnemo, b["source"], a["driving"])
    assert (out_a - out_b).abs().max() > 1e-4, "changing the reference must change ε_θ"
    # every reader layer received reference tokens of the reference net's width
    xnemo.write_reference(xnemo.encode(a["source"]))
    assert set(xnemo.bank.features) == {n for n in xnemo.denoiser.attn_processors if is_spatial_self_attention(n)}
    xnemo.bank.clear()


def test_dropped_reference_is_exactly_plain_self_attention(xnemo):
    a, b = random_clip(seed=1), random_clip(seed=2)
    drop_a = denoise_once(xnemo, a["source"], a["driving"], keep_reference=False)
    drop_b = denoise_once(xnemo, b["source"], a["driving"], keep_reference=False)
    torch.testing.assert_close(drop_a, drop_b, rtol=0, atol=1e-6)
    # …and equals a denoiser whose bank is empty (no reference at all)
    B, T = a["driving"].shape[:2]
    z = torch.randn(B, T, xnemo.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = xnemo.encode_motion(a["source"], a["driving"], torch.ones(B, dtype=torch.bool))
        xnemo.bank.clear()
        plain = xnemo.denoise(z, torch.full((B,), 500), state, torch.arange(B), torch.ones(B, dtype=torch.bool))
    torch.testing.assert_close(drop_a, plain, rtol=1e-5, atol=1e-5)


def test_temporal_layers_are_zero_initialised_and_act_across_frames(xnemo):
    m = xnemo
    d = random_clip(T=3)
    z = torch.randn(1, 3, m.latent_channels, 8, 8, generator=torch.Generator().manual_seed(3))
    keep = torch.ones(1, dtype=torch.bool)
    t = torch.full((1,), 300)
    proj = {n: p for n, p in m.denoiser.named_parameters() if "motion_modules" in n and "proj_out" in n}
    assert proj and all(p.abs().max() == 0 for p in proj.values())
    with torch.no_grad():
        m.bank.clear()
        state = m.encode_motion(d["source"], d["driving"], keep)
        first = {k: v[:, :1] for k, v in state.items()}
        full = m.denoise(z, t, state, torch.arange(1), keep)
        # zero-init: frame 0 alone gives the same output as inside the clip (frames do not interact yet)
        alone = m.denoise(z[:, :1], t, first, torch.arange(1), keep)
        torch.testing.assert_close(full[:, :1], alone, rtol=1e-5, atol=1e-5)
        try:
            for p in proj.values():
                p.normal_(0, 0.2)
            full2 = m.denoise(z, t, state, torch.arange(1), keep)
            alone2 = m.denoise(z[:, :1], t, first, torch.arange(1), keep)
        finally:
            for p in proj.values():
                p.zero_()
    assert (full2[:, :1] - alone2).abs().max() > 1e-4, "trained temporal layers mix information across frames"


def test_condition_keep_masks_drop_each_condition_independently():
    g = torch.Generator().manual_seed(0)
    keep = condition_keep_masks(4000, {"reference": 0.3, "motion": 0.1}, g)
    assert abs((~keep["reference"]).float().mean().item() - 0.3) < 0.03
    assert abs((~keep["motion"]).float().mean().item() - 0.1) < 0.03
    both = (~keep["reference"] & ~keep["motion"]).float().mean().item()
    assert abs(both - 0.03) < 0.015, "the two conditions are dropped independently"
    keep = condition_keep_masks(8, {"reference": 1.0, "motion": 0.0}, g)
    assert not keep["reference"].any() and keep["motion"].all()


def test_training_reference_dropout_really_drops_the_reference(xnemo, monkeypatch):
    a, b = random_clip(T=1, seed=1), random_clip(T=1, seed=2)
    monkeypatch.setitem(xnemo.cfg, "drop_motion_prob", 0.0)
    for prob, same in ((1.0, True), (0.0, False)):
        monkeypatch.setitem(xnemo.cfg, "drop_reference_prob", prob)
        with torch.no_grad():
            la = xnemo.compute_losses({"source": a["source"], "driving": a["driving"]})["loss_diffusion"]
            lb = xnemo.compute_losses({"source": b["source"], "driving": a["driving"]})["loss_diffusion"]
        assert torch.equal(la, lb) == same, f"drop_reference_prob={prob}"


def test_step_noise_is_a_function_of_seed_and_step(xnemo, monkeypatch):
    d = random_clip(T=1)
    with torch.no_grad():
        l0 = xnemo.compute_losses(d)["loss_diffusion"]
        l0b = xnemo.compute_losses(d)["loss_diffusion"]
    assert torch.equal(l0, l0b)
    g1 = xnemo.step_generator().initial_seed()
    monkeypatch.setitem(xnemo.cfg, "noise_seed", xnemo.cfg.noise_seed + 1)
    assert xnemo.step_generator().initial_seed() != g1


def test_window_spans_cover_and_weights_sum_to_one():
    for T, size, ov in ((10, 4, 2), (17, 8, 3), (5, 8, 2), (9, 4, 0)):
        spans = window_spans(T, size, ov)
        assert spans[0][0] == 0 and spans[-1][1] == T
        assert all(e - s == min(size, T) for s, e in spans)
        assert all(spans[i + 1][0] <= spans[i][1] - ov for i in range(len(spans) - 1))
        total = torch.zeros(T)
        for (s, e), w in zip(spans, window_weights(spans, T)):
            total[s:e] += w
        torch.testing.assert_close(total, torch.ones(T))


def test_windows_join_without_seams():
    """Each window predicts a different constant: a hard cut jumps by the full difference at the boundary, the
    blended clip ramps across the overlap in steps of at most difference / (overlap + 1)."""
    T, size, ov = 14, 6, 2
    spans = window_spans(T, size, ov)
    assert spans == [(0, 6), (4, 10), (8, 14)]
    out = blend_windows(lambda s, e: torch.full((1, e - s), s / 4), T, size, ov)  # levels 0, 1, 2
    steps = out[0].diff().abs()
    assert steps.max() <= 1.0 / (ov + 1) + 1e-6
    cut = blend_windows(lambda s, e: torch.full((1, e - s), s / 4), T, size, 0)    # windows 0-6, 6-12, 8-14
    assert cut[0].diff().abs().max() >= 1.0


def test_windowed_sampling_equals_single_window_for_frame_independent_denoiser():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 7, 2, 3, 3, generator=g)
    weight = torch.randn(2, 2, generator=g)

    def denoise(z, t, s, e):  # per-frame, no temporal interaction: windows must agree on every shared frame
        return torch.einsum("btchw,dc->btdhw", z, weight) * (t.float() / 1000)

    from omegaconf import OmegaConf

    from lit_models.diffusion.config import DiffusionConfig

    cfg = OmegaConf.structured(DiffusionConfig(_target_="x", name="x"))
    for kind in ("ddim", "dpmpp"):
        full = sample_clip(denoise, noise, make_sampler(cfg, kind), 4, window_size=16, window_overlap=0)
        win = sample_clip(denoise, noise, make_sampler(cfg, kind), 4, window_size=3, window_overlap=1)
        torch.testing.assert_close(full, win, rtol=1e-5, atol=1e-5)


def test_animate_windowed_matches_unwindowed_at_init(xnemo, monkeypatch):
    """Zero-initialised temporal layers make frames independent, so windowed sampling must equal one window."""
    d = random_clip(T=5, seed=4, size=24)
    monkeypatch.setitem(xnemo.cfg, "window_size", 8)
    monkeypatch.setitem(xnemo.cfg, "window_overlap", 0)
    full = xnemo.animate(d["source"], d["driving"], num_inference_steps=2)
    monkeypatch.setitem(xnemo.cfg, "window_size", 3)
    monkeypatch.setitem(xnemo.cfg, "window_overlap", 1)
    win = xnemo.animate(d["source"], d["driving"], num_inference_steps=2, sampler="dpmpp")
    win_ddim = xnemo.animate(d["source"], d["driving"], num_inference_steps=2)
    assert full.shape == (1, 5, 3, 24, 24) and 0 <= full.min() and full.max() <= 1
    torch.testing.assert_close(full, win_ddim, rtol=1e-4, atol=1e-4)
    assert win.shape == full.shape


def test_a_few_training_steps_reduce_the_loss(xnemo, monkeypatch):
    m = xnemo  # shared fixture: its weights are restored afterwards, its switches by monkeypatch
    state = {k: v.clone() for k, v in m.state_dict().items()}
    monkeypatch.setitem(m.cfg, "drop_reference_prob", 0.0)
    monkeypatch.setitem(m.cfg, "drop_motion_prob", 0.0)
    monkeypatch.setitem(m.cfg, "use_driving_augmentation", False)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    d = random_clip(B=2, T=1, seed=5)
    losses = []
    try:
        for _ in range(3):  # global_step stays 0: the same noise and timesteps, so the loss is comparable
            loss = m.weighted_total(m.compute_losses(d))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        m.load_state_dict(state)
    assert losses[-1] < 0.9 * losses[0], losses


def test_full_sd15_denoiser_parameter_count(compose_cfg_module):
    """The full configs' U-Net is SD-1.5's (859.52M parameters), built from config on the meta device."""
    from lit_models.diffusion.networks import build_unet2d, build_video_unet, count_parameters

    for name in ("xnemo", "xportrait"):
        cfg = compose_cfg_module("train", [f"model={name}", "model.pretrained_model_name_or_path=null"]).model
        with torch.device("meta"):
            unet = build_unet2d(cfg)
            n2d = count_parameters(unet)
            video = build_video_unet(cfg, unet)
        nvid = count_parameters(video)
        print(f"{name}: SD-1.5 U-Net {n2d / 1e6:.2f}M, with temporal layers {nvid / 1e6:.2f}M")
        assert n2d == 859_520_964
        assert list(unet.config.block_out_channels) == [320, 640, 1280, 1280] and unet.config.cross_attention_dim == 768
        assert nvid > n2d + 300_000_000  # AnimateDiff-sized motion modules on every block


def test_full_config_names_missing_weights(compose_cfg_module, tmp_path):
    from lit_models.diffusion.networks import MissingWeightsError

    cfg = compose_cfg_module("train", ["model=xnemo", f"model.pretrained_model_name_or_path={tmp_path}/sd15",
                                       "model.vae_type=kl", "model.vae_path=null"]).model
    with pytest.raises(MissingWeightsError, match=r"sd15.*unet.*pretrained_model_name_or_path"):
        build_model(cfg)
    svd = compose_cfg_module("train", ["model=xnemo", f"model.vae_path={tmp_path}/svd/vae"]).model   # the default VAE
    with pytest.raises(MissingWeightsError, match=r"svd/vae.*vae_path.*stable-video-diffusion-img2vid-xt"):
        build_model(svd)


@pytest.mark.slow
def test_full_size_video_denoiser_one_forward(compose_cfg_module):
    """SD-1.5-sized ReferenceNet + video denoiser (random init, pixel space so no VAE is needed), one loss forward
    at 16² (~9 GB of fp32 weights; no backward, to stay within a workstation's memory)."""
    cfg = compose_cfg_module("train", ["model=xnemo", "model.pretrained_model_name_or_path=null", "model.latent=pixel",
                                       "model.unet.in_channels=3", "model.unet.out_channels=3", "model.resolution=16",
                                       "model.motion_encoder_resolution=32", "model.gradient_checkpointing=false",
                                       "model.image_encoder=clip_standin"]).model   # no SD weights here
    m = build_model(cfg)
    counts = m.parameter_counts()
    print(counts)
    assert counts["denoiser"] > 1.2e9 and counts["reference_net"] > 8.5e8
    with torch.no_grad():
        loss = m.compute_losses(random_clip(B=1, T=2, size=16))["loss_diffusion"]
    assert torch.isfinite(loss)


def test_timestep_spacing_knob_reaches_both_samplers():
    """trailing starts few-step sampling at the pure-noise end (t = 999); leading (SD-1.5) does not."""
    from omegaconf import OmegaConf

    from lit_models.diffusion.config import DiffusionConfig

    cfg = OmegaConf.structured(DiffusionConfig(_target_="x", name="x"))
    for kind in ("ddim", "dpmpp"):
        firsts = {}
        for spacing in ("leading", "trailing"):
            cfg.timestep_spacing = spacing
            s = make_sampler(cfg, kind)
            s.set_timesteps(4)
            firsts[spacing] = int(s.timesteps[0])
        assert firsts["trailing"] == 999 and firsts["leading"] <= 900, (kind, firsts)
    from omegaconf.errors import ValidationError

    with pytest.raises(ValidationError, match="timestep_spacing"):    # the schema: at assignment / compose time
        cfg.timestep_spacing = "sideways"
    # a config without the schema (a checkpoint's plain hyper-parameters) and the `kind` argument: one ValueError
    # naming the key and the choices
    plain = OmegaConf.create(OmegaConf.to_container(cfg, enum_to_str=True))
    plain.timestep_spacing = "sideways"
    with pytest.raises(ValueError, match=r"timestep_spacing='sideways' is not one of leading, trailing, linspace, "
                                         r"ldm_uniform$"):
        make_sampler(plain)
    with pytest.raises(ValueError, match=r"sampler='euler' is not one of ddim, dpmpp$"):
        make_sampler(cfg, "euler")


def test_prediction_type_sets_the_regression_target(xnemo, monkeypatch):
    """With ε_θ ≡ 0 the loss is E[goal²]: ε for epsilon, z_0 (the clean target latents) for sample, and
    √ᾱ ε − √(1−ᾱ) z_0 for v_prediction (reference: the same step's noise and t drawn again from step_generator)."""
    d = random_clip(B=2, T=1, seed=6)
    monkeypatch.setattr(xnemo, "denoise", lambda z_t, *a, **k: torch.zeros_like(z_t))
    target = xnemo.to_model(d["driving"])
    z0 = xnemo.encode(target.flatten(0, 1))
    g = xnemo.step_generator()
    from lit_models.diffusion.sampling import condition_keep_masks as keep_masks

    keep_masks(2, {"reference": 0.0, "motion": 0.0}, g)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    ab = xnemo.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"epsilon": noise.pow(2).mean(), "sample": z0.pow(2).mean(),
                "v_prediction": (ab.sqrt() * noise - (1 - ab).sqrt() * z0).pow(2).mean()}
    for kind, value in expected.items():
        monkeypatch.setitem(xnemo.cfg, "prediction_type", kind)
        with torch.no_grad():
            loss = xnemo.compute_losses(d)["loss_diffusion"]
        torch.testing.assert_close(loss, value, rtol=1e-5, atol=1e-6, msg=kind)
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    with pytest.raises(ValidationError, match="prediction_type"):     # the schema-typed config refuses it
        xnemo.cfg.prediction_type = "x1"
    # a model rebuilt from a checkpoint's plain hyper-parameters names it when it reads it
    monkeypatch.setattr(xnemo, "cfg", OmegaConf.create(OmegaConf.to_container(xnemo.cfg, resolve=True,
                                                                                       enum_to_str=True)))
    monkeypatch.setitem(xnemo.cfg, "prediction_type", "x1")
    with pytest.raises(ValueError, match=r"model\.prediction_type='x1' is not one of epsilon, v_prediction, sample"):
        xnemo.compute_losses(d)


def test_reference_keys_projected_once_per_reference_equal_the_concatenation():
    """Keys/values of ``[h ; ref[index]]`` computed as ``[W h ; (W ref)[index]]`` (each reference projected once)."""
    from diffusers.models.attention_processor import Attention

    from lit_models.diffusion.reference_attention import _attention

    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8)
    h, ref = torch.randn(6, 5, 16), torch.randn(2, 7, 16)
    index = torch.tensor([0, 0, 0, 1, 1, 1])
    mask = torch.rand(6, 12) > 0.3
    mask[:, 0] = True
    want = _attention(attn, h, torch.cat([h, ref[index]], 1), mask)
    got = _attention(attn, h, h, mask, ref, index)
    assert torch.allclose(got, want, atol=1e-5)


def test_gradient_checkpointing_with_reference_net_and_masking_gives_the_same_gradients(compose_cfg):
    """Backward with gradient checkpointing recomputes the denoiser's self-attention, which reads the ReferenceNet
    bank: the bank stays filled until the next write, and reference-token masking keeps its drawn tokens per layer
    (the generator has moved on by the recomputation). Same gradients with and without checkpointing."""
    from lit_models.registry import build_model

    grads = []
    for gc in ("false", "true"):
        torch.manual_seed(0)
        m = build_model(compose_cfg("train", ["model=xnemo_tiny", "model.resolution=32", "model.unet.sample_size=8",
                                              "model.use_reference_masking=true", "model.reference_mask_ratio=0.5",
                                              "model.drop_reference_prob=0", f"model.gradient_checkpointing={gc}"]).model)
        m.train()
        g = torch.Generator().manual_seed(3)
        batch = {"source": torch.rand(2, 3, 32, 32, generator=g), "driving": torch.rand(2, 2, 3, 32, 32, generator=g)}
        m.weighted_total(m.compute_losses(batch)).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("reference_net") for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-4, msg=n)


def test_circular_windows_draw_their_offset_from_the_configured_range():
    """`window_schedule=circular`: each step's windows start at an offset drawn from [0, offset_range) (X-NeMo's
    official randint(0, 23)); offset_range=0 draws from the whole clip (X-Portrait's)."""
    from diffusers import DDIMScheduler

    from lit_models.diffusion.sampling import sample_clip

    def starts(offset_range, steps=12, T=40):
        seen = []

        def denoise(z, t, idx, _):
            seen.append(int(idx[0]))
            return torch.zeros_like(z)

        sched = DDIMScheduler(num_train_timesteps=1000)
        sample_clip(denoise, torch.zeros(1, T, 1, 2, 2), sched, steps, 24, 4, window_schedule="circular",
                    generator=torch.Generator().manual_seed(0), offset_range=offset_range)
        return seen[::2]      # 40 frames, stride 20: two windows per step, the first starts at the offset

    narrow, wide = starts(3), starts(0)
    assert len(narrow) == 12 and set(narrow) <= {0, 1, 2} and len(set(narrow)) > 1
    assert max(wide) >= 3 and max(wide) < 40


GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "xnemo"


def test_uniform_windows_equal_the_official_context_scheduler():
    """``window_schedule=uniform`` enumerates exactly the windows of the official X-NeMo pipeline (its ``uniform``
    context scheduler called as ``uniform(0, 35, N, 24, 1, 4, True, offset)``; output recorded in
    ``tests/golden/xnemo/windows_uniform.json``) for N = 16 … 100 and several offsets: N = 41 is 3 windows (the
    X-Portrait enumeration gives 2), N ≤ 24 one unshifted window."""
    from lit_models.diffusion.sampling import circular_windows, step_windows, uniform_windows

    gold = json.loads((GOLDEN / "windows_uniform.json").read_text())
    assert {c["num_frames"] for c in gold["cases"]} >= {16, 41, 100}
    for case in gold["cases"]:
        N, off = case["num_frames"], case["offset"]
        ours = [w.tolist() for w in uniform_windows(N, 24, 4, off)]
        assert ours == case["windows"], (N, off)
        assert [w.tolist() for w in step_windows("uniform", N, 24, 4, off)[0]] == case["windows"]
    n41 = next(c for c in gold["cases"] if (c["num_frames"], c["offset"]) == (41, 7))
    assert len(n41["windows"]) == 3 and len(circular_windows(41, 24, 4, 7)) == 2
    assert uniform_windows(16, 24, 4, 5)[0].tolist() == list(range(16))


def test_uniform_schedule_in_sample_clip_runs_the_official_windows_of_the_drawn_offset():
    """``sample_clip(window_schedule=uniform)``: the denoiser sees the official windows of the offset drawn from the
    generator (N = 41: three windows)."""
    from diffusers import DDIMScheduler

    from lit_models.diffusion.sampling import sample_clip, uniform_windows

    seen = []

    def denoise(z, t, idx, _):
        seen.append(idx.clone())
        return torch.zeros_like(z)

    gen = torch.Generator().manual_seed(3)
    sched = DDIMScheduler(num_train_timesteps=1000)
    sample_clip(denoise, torch.zeros(1, 41, 1, 2, 2), sched, 1, 24, 4, window_schedule="uniform", generator=gen,
                offset_range=24)
    off = int(torch.randint(0, 24, (), generator=torch.Generator().manual_seed(3)))
    assert len(seen) == 3 and [w.tolist() for w in seen] == [w.tolist() for w in uniform_windows(41, 24, 4, off)]
