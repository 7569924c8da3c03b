"""X-Portrait: global + local ControlNet control, eye / mouth patches from landmarks, the local-control ablation,
motion dropout and the training driving input that does not share the source's appearance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from animate_helpers import animate_entry_point, luma_blocks
from helpers import assert_motion_dropout_drops_the_driving, random_clip

from lit_models.registry import build_model
from lit_models.xportrait.local_control import REGION_LAYOUTS, local_patch_masks, official_patch_masks, region_boxes

SHRINK = ["model.resolution=32", "model.unet.sample_size=8", "model.num_inference_steps=2"]


def build(*overrides):
    from experiments.compose import compose

    torch.manual_seed(0)
    m = build_model(compose("train", ["model=xportrait_tiny", *SHRINK, *overrides]).model)
    # ControlNets start as exact no-ops (zero convs); give them weights so the driving input matters
    with torch.no_grad():
        for name, p in m.named_parameters():
            if any(k in name for k in ("controlnet_down_blocks", "controlnet_mid_block", "cond_embedding.conv_out")):
                p.normal_(0, 0.05)
    return m


@pytest.fixture(scope="module")
def xportrait():
    return build()


def test_patches_from_68_point_and_synthfaces_landmarks():
    for K in (68, 29):
        kp = torch.full((1, K, 2), 0.5)
        for region, centre in zip(REGION_LAYOUTS[K].values(), ((0.3, 0.4), (0.7, 0.4), (0.5, 0.75))):
            kp[0, region] = torch.tensor(centre) + 0.02 * torch.randn(len(region), 2)
        boxes = region_boxes(kp, margin=0.35, min_size=0.08)
        assert boxes.shape == (1, 3, 4)
        mask = local_patch_masks(1, 32, kp, [[0, 0, 0.1, 0.1]] * 3, 0.35, 0.08)[0, 0]
        for cx, cy in ((0.3, 0.4), (0.7, 0.4), (0.5, 0.75)):
            assert mask[int(cy * 32), int(cx * 32)] == 1
        assert mask[2, 2] == 0 and mask[16, 16] == 0 and 0.03 < mask.mean() < 0.4


def test_fixed_boxes_without_landmarks_or_where_detection_failed():
    fixed = [[0.25, 0.30, 0.47, 0.47], [0.53, 0.30, 0.75, 0.47], [0.30, 0.60, 0.70, 0.82]]
    none = local_patch_masks(2, 32, None, fixed, 0.35, 0.08)
    assert none.shape == (2, 1, 32, 32) and none[0, 0, 12, 11] == 1 and none[0, 0, 22, 16] == 1 and none[0, 0, 2, 2] == 0
    kp = torch.full((2, 68, 2), float("nan"))
    torch.testing.assert_close(local_patch_masks(2, 32, kp, fixed, 0.35, 0.08), none)
    odd = torch.rand(2, 5, 2)  # unknown layout → fixed boxes
    torch.testing.assert_close(local_patch_masks(2, 32, odd, fixed, 0.35, 0.08), none)


def _official_local_image(frame: np.ndarray, lmks256: np.ndarray, target_res: int = 512) -> np.ndarray:
    """The official rule (core/test_xportrait.py ``extract_local_feature_from_single_img``, re-typed for the test):
    centres = round(mean of landmark slices at 256²), clipped to [32, 223], scaled to target_res; patches of half
    side target_res // 8; the frame inside, 0 outside, then ×2 − 1."""
    halfedge, half = 32, target_res // 8
    out = np.zeros_like(frame)
    for sl in (slice(43, 48), slice(37, 42), slice(49, 68)):
        c = (np.clip(np.round(np.mean(lmks256[sl], axis=0)), halfedge, 255 - halfedge) * (target_res / 256)).astype(int)
        out[c[1] - half:c[1] + half, c[0] - half:c[0] + half] = frame[c[1] - half:c[1] + half, c[0] - half:c[0] + half]
    return out * 2 - 1


def test_official_local_patches_are_128_at_512_and_landmark_centred():
    """Official patches: three 128² squares at 512² centred on the landmark means (the frame inside, −1 outside);
    equal pixel for pixel to the official rule for landmarks on the 256² grid; centres near the border are kept a
    half patch inside; missing landmarks fall back to the fixed boxes' centres."""
    g = torch.Generator().manual_seed(0)
    lmk256 = torch.rand(68, 2, generator=g) * 200 + 28
    lmk256[43:48] = torch.tensor([90.0, 100.0]) + torch.randn(5, 2, generator=g).round()
    lmk256[37:42] = torch.tensor([170.0, 100.0]) + torch.randn(5, 2, generator=g).round()
    lmk256[49:68] = torch.tensor([10.0, 240.0])                                  # mouth at the corner: clipped
    lmk256[37:42] -= lmk256[37:42].mean(0) - lmk256[37:42].mean(0).round()     # integer means (no .5 rounding ties)
    lmk256[43:48] -= lmk256[43:48].mean(0) - lmk256[43:48].mean(0).round()
    frame = torch.rand(3, 512, 512, generator=g)
    ref = _official_local_image(frame.permute(1, 2, 0).numpy(), lmk256.numpy())
    kp = ((lmk256 * 2 + 0.5) / 512)[None]              # 512² pixel landmarks → [0, 1] as normalise_keypoints does
    mask = official_patch_masks(1, 512, kp, [[0.25, 0.3, 0.45, 0.45]] * 3, patch_size=0.25)
    ours = torch.where(mask[0] > 0, frame * 2 - 1, torch.tensor(-1.0))
    assert mask.sum() == 3 * 128 * 128
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), ref)
    none = official_patch_masks(2, 64, None, [[0.25, 0.30, 0.47, 0.47], [0.53, 0.30, 0.75, 0.47],
                                              [0.30, 0.60, 0.70, 0.82]], patch_size=0.25)
    assert none.shape == (2, 1, 64, 64) and none[0, 0].sum() <= 3 * 16 * 16
    assert none[0, 0, int(0.385 * 64), int(0.36 * 64)] == 1 and none[0, 0, 2, 2] == 0


def test_local_control_sees_only_the_patches_and_the_flag_removes_it(xportrait, monkeypatch):
    d = {k: xportrait.to_model(v) for k, v in random_clip().items()}  # model resolution (32²): 8² latents
    B, T = d["driving"].shape[:2]
    keep = torch.ones(B, dtype=torch.bool)
    state = xportrait.encode_motion(d["source"], d["driving"], keep)
    outside = (state["local_mask"] == 0).expand_as(state["local"])
    inside = ~outside
    assert xportrait.cfg.local_patch_mode == "official"       # official: the driving frame in the patches, −1 outside
    assert outside.any() and (state["local"][outside] == -1).all()
    assert torch.equal(state["local"][inside], (d["driving"] * 2 - 1)[inside])
    with monkeypatch.context() as mp:
        mp.setitem(xportrait.cfg, "local_patch_mode", "box")   # ours: 0 outside
        box = xportrait.encode_motion(d["source"], d["driving"], keep)
        out_box = (box["local_mask"] == 0).expand_as(box["local"])
        assert out_box.any() and (box["local"][out_box] == 0).all()
    z = torch.randn(B * T, xportrait.latent_channels, 8, 8)
    rows = {k: v.flatten(0, 1) for k, v in state.items()}
    with torch.no_grad():
        _, down, mid = xportrait.condition_denoiser(rows, z, torch.full((B * T,), 400))
        rows2 = dict(rows, local=torch.zeros_like(rows["local"]))
        _, down2, mid2 = xportrait.condition_denoiser(rows2, z, torch.full((B * T,), 400))
    skips = 1 + sum(len(b.resnets) + len(b.downsamplers or []) for b in xportrait.denoiser.down_blocks)
    assert len(down) == skips  # one residual per U-Net skip feature
    assert (mid - mid2).abs().max() > 1e-5, "the local patches change the residuals"
    ablated = build("model.use_local_control=false")
    assert ablated.local_control is None and "local" not in ablated.encode_motion(d["source"], d["driving"], keep)
    assert sum(p.numel() for p in ablated.parameters()) < sum(p.numel() for p in xportrait.parameters())


def test_motion_dropout_zeroes_every_control_residual(xportrait, monkeypatch):
    assert_motion_dropout_drops_the_driving(xportrait, monkeypatch)


def test_training_driving_does_not_share_the_source_appearance(xportrait, monkeypatch):
    d = random_clip(T=2)
    g = torch.Generator().manual_seed(0)
    aug = xportrait.prepare_driving(d, d["driving"], g)
    assert (aug - d["driving"]).abs().mean() > 0.01
    monkeypatch.setitem(xportrait.cfg, "driving_appearance", "cross_identity")
    with pytest.raises(KeyError, match="driving_cross"):
        xportrait.prepare_driving(d, d["driving"], g)
    other = torch.rand(1, 2, 3, 64, 64)
    out = xportrait.prepare_driving(dict(d, driving_cross=other), d["driving"], g)
    assert torch.allclose(out, xportrait.to_model(other))
    monkeypatch.setitem(xportrait.cfg, "driving_appearance", "none")
    assert torch.equal(xportrait.prepare_driving(d, d["driving"], g), d["driving"])


def test_cross_identity_driving_trains_one_step_on_synthfaces(xportrait, compose_cfg, synth_root, tmp_path):
    """experiment=xportrait_cross_identity on SynthFaces (data.use_synth_cross_driving): the control reads the
    training batch's ``driving_cross`` (another training identity doing the same motion) and places the local
    patches on its ``keypoints_cross``; one Trainer step (uint8 transport, converted after transfer) has a finite
    loss and moves the ControlNet."""
    import copy

    import lightning as L

    from datamodules import VideoClipDataModule

    cfg = compose_cfg("train", ["experiment=xportrait_cross_identity", f"data.root={synth_root}", "data.synth=null",
                                "data.num_workers=0", "data.batch_size=2", "data.resolution=32",
                                *SHRINK])
    assert cfg.model.driving_appearance == "cross_identity" and cfg.data.use_synth_cross_driving
    m = copy.deepcopy(xportrait)          # the module's tiny model (a fresh build costs ~2.5 s); not trained in place
    m.cfg.driving_appearance, m.cfg.drop_motion_prob, m.cfg.drop_reference_prob = cfg.model.driving_appearance, 0.0, 0.0
    dm = VideoClipDataModule(cfg.data)
    batch = next(iter(dm.train_dataloader()))
    assert batch["driving_cross"].shape == batch["driving"].shape == (2, 2, 3, 32, 32)
    states, encode = [], m.encode_motion

    def spy(*args, **kwargs):                 # record the control inputs and eye / mouth patch masks M_t of each loss
        state = encode(*args, **kwargs)
        states.append(state)
        return state

    m.encode_motion = spy
    with torch.no_grad():
        loss = m.compute_losses(batch)["loss_diffusion"]
        m.compute_losses(dict(batch, driving_cross=batch["driving"]))                 # driving as the control
        m.compute_losses(dict(batch, keypoints_cross=batch["keypoints"]))             # driving's landmarks
    del m.encode_motion
    # Compared on the control inputs, not the losses: at this init the controls move the loss by ~1e-7 (patches) and
    # ~1e-6 (control image), a few float32 ulps, so a loss comparison flipped with kernel rounding (1 full run in 6).
    assert torch.isfinite(loss)
    control = m.to_model(batch["driving_cross"]) * 2 - 1
    assert torch.equal(states[0]["control"], control), "the control input is driving_cross, not driving"
    assert not torch.equal(states[1]["control"], control)
    # the local patches follow driving_cross's own landmarks (the masks differ in 58 of 4096 pixels)
    masks = [st["local_mask"] for st in states]
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    before = [p.detach().clone() for p in m.global_control.parameters()]
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(m, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, m.global_control.parameters()))


def test_animate_with_and_without_keypoints(xportrait):
    d = random_clip(T=2, size=20)
    out = xportrait.animate(d["source"], d["driving"], num_inference_steps=1)  # detector finds nothing → fixed boxes
    assert out.shape == (1, 2, 3, 20, 20) and 0 <= out.min() and out.max() <= 1
    kp = torch.rand(1, 2, 29, 2) * 19
    out_kp = xportrait.animate(d["source"], d["driving"], num_inference_steps=1, keypoints=kp)
    assert out_kp.shape == out.shape and (out_kp - out).abs().max() > 0


def test_animate_entry_point_on_real_fixtures(xportrait, compose_cfg, real_fixtures, tmp_path):
    """`experiments.animate` with a freshly saved tiny X-Portrait checkpoint on the real portrait and clip (face
    crops; local patches from dlib landmarks, or fixed boxes where none are found at 32²): the written clip equals
    (up to H.264) `animate` called directly on the same crops, and the ControlNets make the driving clip matter."""
    written, source, driving = animate_entry_point(xportrait, compose_cfg, real_fixtures, tmp_path)
    assert written.shape == (3, 32, 32, 3)
    direct = xportrait.animate(source, driving)[0].permute(0, 2, 3, 1)
    still = xportrait.animate(source, driving[:, :1].expand_as(driving))[0].permute(0, 2, 3, 1)

    err = (luma_blocks(written) - luma_blocks(direct)).abs().mean()
    assert err < 0.02, err
    assert (direct[1:] - still[1:]).abs().mean() > 10 * (direct[0] - still[0]).abs().mean() + 1e-6, \
        "frames driven by different driving frames differ; frame 0 (same driving frame) does not"


def test_reference_net_runs_at_the_current_timestep(xportrait, monkeypatch):
    """Official X-Portrait runs the appearance net at the denoiser's t: training hands the sampled t to the
    ReferenceNet (reference_timestep=zero hands none, i.e. t = 0), and the bank depends on it."""
    a = random_clip(T=1, seed=3)
    calls, write = [], xportrait.write_reference

    def spy(z, *args, t=None, **kw):
        calls.append(t)
        return write(z, *args, t=t, **kw)

    with monkeypatch.context() as mp, torch.no_grad():
        mp.setattr(xportrait, "write_reference", spy)
        for mode in ("current", "zero"):
            mp.setitem(xportrait.cfg, "reference_timestep", mode)
            xportrait.compute_losses({"source": a["source"], "driving": a["driving"]})
    assert calls[0] is not None and calls[0].shape == (1,) and calls[1] is None
    z = xportrait.encode(xportrait.to_model(a["source"]))
    banks = []
    with torch.no_grad():
        for t in (0, 500):
            xportrait.write_reference(z, t=torch.tensor([t]))
            banks.append(torch.cat([f.flatten() for f in xportrait.bank.features.values()]))
    xportrait.bank.clear()
    assert (banks[0] - banks[1]).abs().max() > 1e-3


def test_official_sampling_preset(compose_cfg):
    """sampling=xportrait_official: the LDM DDIM "uniform" schedule (31 timesteps 991 … 1) whose steps equal the LDM
    DDIM update (eta 0, ᾱ_prev of the previous listed timestep, ᾱ_0 at the end); circular 16-frame windows with
    overlap 4 from a random offset, ε averaged, as the official loop; guidance 5 without reference and controls in
    the uncond branch; x_T the noised source latent."""
    from lit_models.diffusion.sampling import average_windows, circular_windows, make_sampler, set_inference_timesteps

    cfg = compose_cfg("train", ["model=xportrait_tiny", *SHRINK[:2], "sampling=xportrait_official"]).model
    assert (cfg.guidance_scale, list(cfg.guidance_uncond), cfg.window_size, cfg.window_overlap) == \
        (5.0, ["reference", "motion"], 16, 4)
    sched = make_sampler(cfg)
    set_inference_timesteps(sched, cfg.num_inference_steps)
    assert sched.timesteps.tolist() == list(range(991, 0, -33)) and len(sched.timesteps) == 31
    ac = sched.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, generator=g).double(), torch.randn(2, 4, generator=g).double()
    for i, t in enumerate(sched.timesteps.tolist()):
        if t not in (991, 496, 1):
            continue
        a_t = ac[t]
        a_prev = ac[sched.timesteps[i + 1]] if i + 1 < len(sched.timesteps) else ac[0]
        ldm = a_prev.sqrt() * (x - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_prev).sqrt() * eps
        torch.testing.assert_close(sched.step(eps, t, x).prev_sample, ldm, atol=1e-5, rtol=1e-5)  # float32 tables
    # the official window loop (DDIMSampler_ReferenceOnly.ddim_sampling), re-typed: 40 frames, offset 29
    N, b, mix, offset = 40, 16, 4, 29
    ref_out, counts = torch.zeros(N), torch.zeros(N)
    for start in range(offset, offset + N - mix, b - mix):
        idx = torch.arange(start, start + b) % N
        ref_out[idx] += idx.float() ** 2
        counts[idx] += 1
    wins = circular_windows(N, b, mix, offset)
    assert all(len(w) == b for w in wins) and torch.equal(torch.cat(wins).unique(), torch.arange(N))
    torch.testing.assert_close(average_windows(lambda idx: idx.float()[None] ** 2, wins, N)[0], ref_out / counts)

    torch.manual_seed(0)
    m = build_model(cfg)
    d = random_clip(T=5, seed=4)
    runs = {}
    for init in ("noised_reference", "noise"):
        m.cfg.initial_latent = init
        m.cfg.window_size, m.cfg.window_overlap = 4, 1                 # 5 frames: two circular windows per step
        runs[init] = m.animate(d["source"], d["driving"], num_inference_steps=2)
    assert runs["noise"].shape == (1, 5, 3, 16, 16)
    assert (runs["noise"] - runs["noised_reference"]).abs().max() > 1e-3
    # per-frame reference rows (official: a posterior sample per frame) — the pixel codec's sample is its encoding,
    # so each frame reading its own copy equals all frames reading one reference; a wrong row would show
    assert cfg.reference_latent == "sample_per_frame"
    m.cfg.reference_latent = "mean"
    mean = m.animate(d["source"], d["driving"], num_inference_steps=2)
    torch.testing.assert_close(mean, runs["noise"], atol=1e-5, rtol=0)
    m.cfg.reference_latent = "sample_per_frame"
    other = random_clip(T=5, seed=5)["source"]
    m.cfg.initial_latent = "noise"
    swapped = m.animate(other, d["driving"], num_inference_steps=2)
    assert (swapped - runs["noise"]).abs().max() > 1e-3            # the reference matters on the per-frame path
