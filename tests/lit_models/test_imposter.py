"""ImPoster: frequency guidance really moves the latent, plain DDIM is reproduced at scale 0, per-pair fine-tuning
lowers the denoising loss, LoRA-only training, the SD-2.1-base build, personalization on real portraits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_models.imposter.frequency import amplitude_loss, phase_loss, phase_score
from lit_models.registry import build_model

TINY = ["model=imposter_tiny", "model.resolution=16", "model.num_inference_steps=4", "model.driving_prompt_steps=2",
        "model.text.max_length=16"]


@pytest.fixture(scope="module")
def tiny_model():
    from experiments.compose import compose

    torch.manual_seed(0)
    model = build_model(compose("train", TINY).model)
    return model.eval()


def _pair(seed=0, res=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, res, res, generator=g), torch.rand(1, 3, res, res, generator=g)


def test_phase_score_matches_numpy_reference():
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    ours = phase_score(x, r).numpy()
    for b in range(2):
        X = np.fft.fft2(x[b].numpy() - x[b].numpy().mean(axis=(-2, -1), keepdims=True), norm="ortho")
        R = np.fft.fft2(r[b].numpy() - r[b].numpy().mean(axis=(-2, -1), keepdims=True), norm="ortho")
        ref = np.real(X * np.conj(R)).sum() / (np.abs(X) * np.abs(R)).sum()
        assert ours[b] == pytest.approx(ref, abs=1e-4)
    assert torch.allclose(phase_score(x, x), torch.ones(2), atol=1e-5)
    assert torch.allclose(phase_score(x, -x), -torch.ones(2), atol=1e-5)
    # amplitude ignores phase: a circular shift keeps |F| but changes the phase
    shifted = torch.roll(x, shifts=(3, 2), dims=(-2, -1))
    assert amplitude_loss(shifted, x).max() < 1e-5
    assert phase_loss(shifted, x).min() > 0.1


def test_frequency_guidance_moves_latent_and_lowers_phase_loss(tiny_model):
    m = tiny_model
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, 16, 16, generator=g)
    eps = torch.randn(2, 3, 16, 16, generator=g)
    z_drv, z_src = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    a_prev = 0.5
    x0 = lambda zz: (zz - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)  # noqa: E731
    before = phase_loss(x0(z), z_drv)
    with torch.inference_mode():  # Lightning's predict/test loops run under inference mode
        z_new, parts = m.frequency_guidance(z, eps, a_prev, z_drv, z_src, step_size=0.05)
    assert not torch.equal(z_new, z)
    assert (z_new - z).abs().mean() > 1e-3
    after = phase_loss(x0(z_new), z_drv)
    assert (after < before).all(), (before, after)
    assert torch.allclose(parts["phase"], before, atol=1e-5)
    # step size 0 leaves the latent exactly where it was
    z_same, _ = m.frequency_guidance(z, eps, a_prev, z_drv, z_src, step_size=0.0)
    assert torch.equal(z_same, z)


def _plain_ddim(m, source, driving, noise):
    """Reference: diffusers' DDIM loop on the same U-Net, driving prompt for the first k steps, no guidance."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(m.scheduler_config)
    sched.set_timesteps(m.cfg.num_inference_steps)
    emb_d = m.encode_prompts([m.cfg.driving_caption])
    emb_t = m.encode_prompts([m.cfg.target_prompt])
    unc = m.encode_prompts([""])
    z = noise * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        emb = emb_d if i < m.cfg.driving_prompt_steps else emb_t
        e_u = m.unet(z, t, encoder_hidden_states=unc).sample
        e_c = m.unet(z, t, encoder_hidden_states=emb).sample
        z = sched.step(e_u + m.cfg.cfg_scale * (e_c - e_u), t, z).prev_sample
    return ((z + 1) / 2).clamp(0, 1)


@torch.no_grad()
def test_guidance_scale_zero_is_plain_sampling_and_guidance_changes_it(tiny_model):
    m = tiny_model
    src, drv = _pair()
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    plain = m.sample(src, drv, noise=noise, freq_guidance_scale=0.0)
    ref = _plain_ddim(m, src, drv, noise)
    assert torch.allclose(plain, ref, atol=1e-5), (plain - ref).abs().max()
    guided, trace = m.sample(src, drv, noise=noise, freq_guidance_scale=0.2, return_trace=True)
    assert len(trace) == m.cfg.num_inference_steps and all(s["moved"] > 0 for s in trace)
    assert (guided - plain).abs().mean() > 1e-3
    # the guided sample's phase is closer to the driving image's than the unguided one
    assert phase_score(guided * 2 - 1, drv * 2 - 1) > phase_score(plain * 2 - 1, drv * 2 - 1)


def test_per_pair_finetuning_lowers_denoising_loss(compose_cfg):
    import lightning as L
    from torch.utils.data import DataLoader

    from lit_models.imposter.data import PairDataset

    cfg = compose_cfg("train", TINY + ["model.optimizer.lr=2e-3"])
    torch.manual_seed(0)
    m = build_model(cfg.model)
    src, drv = _pair(5)
    batch = {"source": src, "driving": drv[:, None], "caption_source": ["a man"], "caption_driving": ["a man waving"]}

    def fixed_loss():
        torch.manual_seed(123)  # same noise and timesteps before and after
        with torch.no_grad():
            return {k: float(v) for k, v in m.compute_losses(batch).items()}

    before = fixed_loss()
    assert set(before) == {"loss_source", "loss_driving"}
    data = DataLoader(PairDataset(src[0], drv[0], "a man", "a man waving", length=4), batch_size=1)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, data)
    after = fixed_loss()
    assert after["loss_source"] < before["loss_source"] and after["loss_driving"] < before["loss_driving"]


def _one_step(m, lr=1e-2, seed=0):
    """One Adam step of the model's own optimizer (its trainable set) on a fixed pair; returns the old weights."""
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = m.configure_optimizers()
    for group in opt.param_groups:
        group["lr"] = lr
    src, drv = _pair(seed)
    torch.manual_seed(seed)
    m.weighted_total(m.compute_losses({"source": src, "driving": drv[:, None]})).backward()
    opt.step()
    return before, opt


def test_default_finetunes_every_unet_weight_as_released(compose_cfg):
    full = compose_cfg("train", ["model=imposter"]).model
    assert full.finetune == "full" and full.optimizer.lr == pytest.approx(2e-6) and full.driving_prompt_steps == 6
    assert full.shared_noise and full.num_inference_steps == 50 and full.cfg_scale == 7.5
    torch.manual_seed(0)
    m = build_model(compose_cfg("train", TINY).model)
    assert m.cfg.finetune == "full"
    before, opt = _one_step(m)
    opt_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in m.unet.parameters()}  # every U-Net weight, nothing else (no text encoder)
    assert not any("lora_" in n for n, _ in m.named_parameters())
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    unet = {f"unet.{n}" for n, _ in m.unet.named_parameters()}
    assert moved == unet, sorted(unet ^ moved)[:5]


def test_lora_mode_trains_only_adapters_and_saves_them_with_peft(compose_cfg, tmp_path):
    from peft import PeftModel

    cfg = compose_cfg("train", TINY + ["model.finetune=lora", "model.lambda_driving=0"])
    torch.manual_seed(0)
    m = build_model(cfg.model)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(p.requires_grad for p in m.text_encoder.parameters())
    src, drv = _pair()
    assert set(m.compute_losses({"source": src, "driving": drv[:, None]})) == {"loss_source"}  # λ = 0 skips it
    before, _ = _one_step(m)
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved) and any("lora_B" in n for n in moved)

    # the personalized adapter through peft's save_pretrained, restored on a fresh base U-Net by PeftModel
    folder = m.save_adapter(tmp_path / "lora")
    assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
    torch.manual_seed(0)
    base = build_model(compose_cfg("train", TINY).model).unet  # same seed: the same (untouched) base weights
    restored = PeftModel.from_pretrained(base, str(folder)).eval()
    m.eval()
    z, t, emb = torch.randn(1, 3, 16, 16), torch.tensor([500]), m.encode_prompts(["a man"])
    with torch.no_grad():
        ours, theirs = m.unet(z, t, encoder_hidden_states=emb).sample, restored(z, t, encoder_hidden_states=emb).sample
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    with restored.disable_adapter(), torch.no_grad():
        plain = restored(z, t, encoder_hidden_states=emb).sample
    assert (plain - ours).abs().max() > 1e-4  # the adapter is what makes the difference
    full = build_model(compose_cfg("train", TINY).model)
    with pytest.raises(ValueError, match="finetune=lora"):
        full.save_adapter(tmp_path / "nope")
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="model.finetune"):  # the schema's enum, at compose time
        compose_cfg("train", TINY + ["model.finetune=adapters"])


def test_full_lora_trains_the_unet_and_the_adapters(compose_cfg):
    torch.manual_seed(0)
    m = build_model(compose_cfg("train", TINY + ["model.finetune=full_lora"]).model)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert trainable == {f"unet.{n}" for n, _ in m.unet.named_parameters()}


@torch.no_grad()
def test_prompt_switch_happens_at_step_k(compose_cfg):
    """The conditional branch reads c_D for DDIM steps 0..K-1 and c_T from step K on (K = driving_prompt_steps)."""
    cfg = compose_cfg("train", TINY + ["model.num_inference_steps=8", "model.driving_prompt_steps=6"])
    torch.manual_seed(0)
    m = build_model(cfg.model).eval()
    seen = []
    hook = m.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    src, drv = _pair()
    try:
        m.sample(src, drv, target_prompts=["a photo of the woman waving"], driving_prompts=["a man waving"])
    finally:
        hook.remove()
    emb_d, emb_t = m.encode_prompts(["a man waving"]), m.encode_prompts(["a photo of the woman waving"])
    assert len(seen) == 8 and not torch.allclose(emb_d, emb_t)
    cond = [e[1:] for e in seen]  # CFG: [uncond ; cond]
    used = ["D" if torch.equal(c, emb_d) else "T" if torch.equal(c, emb_t) else "?" for c in cond]
    assert used == ["D"] * 6 + ["T"] * 2


def test_shared_noise_uses_one_noise_and_timestep_for_both_images(compose_cfg, monkeypatch):
    torch.manual_seed(0)
    m = build_model(compose_cfg("train", TINY).model)
    calls = []
    add_noise = m.noise_scheduler.add_noise
    monkeypatch.setattr(m.noise_scheduler, "add_noise",
                        lambda z, n, t: calls.append((n.clone(), t.clone())) or add_noise(z, n, t))
    src, drv = _pair()
    m.compute_losses({"source": src, "driving": drv[:, None]})
    (noise, t), = calls
    assert torch.equal(noise[0], noise[1]) and t[0] == t[1]
    m.cfg.shared_noise = False
    m.compute_losses({"source": src, "driving": drv[:, None]})
    assert not torch.equal(calls[1][0][0], calls[1][0][1])


def test_full_config_is_sd21_base_and_names_missing_weights(compose_cfg, tmp_path):
    from lit_models.imposter.backbone import count_params, sd21_unet_on_meta
    from lit_models.imposter.config import SD21_BASE_UNET_PARAMS

    cfg = compose_cfg("train", ["model=imposter"]).model
    assert cfg.backbone == "pretrained" and cfg.use_vae and cfg.resolution == 512
    assert "stable-diffusion-2-1-base" in cfg.pretrained_model_name_or_path
    unet = sd21_unet_on_meta()
    assert count_params(unet) == SD21_BASE_UNET_PARAMS
    out = unet(torch.empty(1, 4, 64, 64, device="meta"), 10, encoder_hidden_states=torch.empty(1, 77, 1024, device="meta"))
    assert out.sample.shape == (1, 4, 64, 64)
    missing = tmp_path / "sd21"
    missing.mkdir()
    cfg.pretrained_model_name_or_path = str(missing)
    cfg.local_files_only = True
    with pytest.raises(FileNotFoundError, match="unet") as err:
        build_model(cfg)
    assert str(missing) in str(err.value) and "pretrained_model_name_or_path" in str(err.value)


@pytest.mark.fixtures
def test_personalize_on_real_portraits_ends_in_an_eval_table(real_fixtures, tmp_path, capsys):
    """Batch personalization over a pairs file (2 seeds) ends in eval.table's table (mean ± std over the seeds);
    a second call resumes: pairs already done are kept, not recomputed."""
    import pandas as pd

    from experiments.personalize import main

    pairs = tmp_path / "pairs.csv"
    portraits = real_fixtures / "portraits"
    pairs.write_text("source,source_caption,driving,driving_caption,target_prompt\n"
                     f"{portraits / 'astronaut.png'},a photo of a woman,{portraits / 'hand_on_forehead_rgba.png'},"
                     "a photo of a man with a hand on his forehead,a photo of the woman with a hand on her forehead\n")
    out = tmp_path / "out"
    table = main(["--pairs", str(pairs), "--out", str(out), "--steps", "2", "--seeds", "0,1", "--no-wandb", *TINY])
    assert len(table) == 2 and sorted(table["seed"]) == [0, 1]
    for _, row in table.iterrows():
        assert -1.0 <= row["phase_score"] <= 1.0 and 0.0 <= row["final_loss"] < 10
    assert (out / "pair000_seed0" / "output.png").exists() and (out / "results.csv").exists()
    # no CLIP/DINO weights here: the columns are absent, never filled with a stand-in number
    assert "clip_i" not in table.columns and "dino" not in table.columns

    md = (out / "table.md").read_text()
    assert "protocol `imposter_personalize`" in md and "ssim_source ↑" in md
    agg = pd.read_csv(out / "table.csv")
    assert len(agg) == 1 and agg.loc[0, "n"] == 2 and agg.loc[0, "model.backbone"] == "random_init"
    assert agg.loc[0, "pair"].startswith("000 astronaut / hand_on_forehead_rgba")
    for m in ("phase_score", "ssim_source", "final_loss"):
        assert agg.loc[0, f"{m}_mean"] == pytest.approx(table[m].mean(), rel=1e-6)
        assert agg.loc[0, f"{m}_std"] == pytest.approx(table[m].std(ddof=1), rel=1e-6, abs=1e-9)
    assert "clip_i_mean" not in agg.columns

    before = (out / "pair000_seed1" / "metrics.json").stat().st_mtime_ns
    again = main(["--pairs", str(pairs), "--out", str(out), "--steps", "2", "--seeds", "0,1", "--no-wandb", *TINY])
    assert (out / "pair000_seed1" / "metrics.json").stat().st_mtime_ns == before
    assert again["ssim_source"].tolist() == table["ssim_source"].tolist()
    assert "done before, kept" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pair000_seed0.*--overwrite"):  # a kept run of another job is not mixed in
        main(["--pairs", str(pairs), "--out", str(out), "--steps", "3", "--seeds", "0,1", "--no-wandb", *TINY])
