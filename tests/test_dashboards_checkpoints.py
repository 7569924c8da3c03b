"""Checkpoints to compare over time: the newest N + every-k-steps ones (trainer.keep_last_n / keep_every_n_steps),
EMA weights for the diffusion methods (model.ema_decay, Lightning's EMAWeightAveraging) and LR warmup / cosine
schedules (model.scheduler, diffusers' get_scheduler)."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import tiny_run

SHRINK = ["model.resolution=32", "model.unet.sample_size=8", "model.motion_encoder_resolution=16",
          "model.motion_encoder_channels=[8,16]", "model.num_inference_steps=2", "model.motion_dim=32"]


def test_keeps_the_last_n_and_every_k_steps(compose_cfg, synth_root, tmp_path):
    from experiments.train import train

    run = tmp_path / "run"
    train(compose_cfg("train", ["experiment=baseline_direct",
                                *tiny_run(synth_root, run, "logger=none", "evaluate_after_train=false",
                                          "trainer.max_steps=4", "trainer.val_check_interval=100",
                                          "trainer.checkpoint_every_n_steps=1", "trainer.keep_last_n=2",
                                          "trainer.keep_every_n_steps=2")]))
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert names == ["keep-step0000002.ckpt", "keep-step0000004.ckpt", "last.ckpt", "step0000003.ckpt",
                     "step0000004.ckpt"]
    steps = {n: torch.load(run / "checkpoints" / n, weights_only=False, map_location="cpu")["global_step"]
             for n in names}
    assert steps == {"keep-step0000002.ckpt": 2, "keep-step0000004.ckpt": 4, "last.ckpt": 4, "step0000003.ckpt": 3,
                     "step0000004.ckpt": 4}


def test_keep_last_n_must_be_positive(compose_cfg, tmp_path):
    from experiments.runtime import ConfigError, validate

    with pytest.raises(ConfigError, match="trainer.keep_last_n"):
        validate(compose_cfg("train", ["trainer.keep_last_n=0", f"run_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="model.ema_decay"):
        validate(compose_cfg("train", ["model=xnemo_tiny", "model.ema_decay=1.5", f"run_dir={tmp_path}"]))


def test_warmup_cosine_schedule_follows_the_formula(compose_cfg):
    """model.scheduler.name=cosine with warmup W over max_steps S: lr_s = lr·s/W for s < W, then
    lr·½(1 + cos(π (s − W)/(S − W)))."""
    import lightning as L

    from lit_models.registry import build_model

    cfg = compose_cfg("train", ["model=xnemo_tiny", *SHRINK, "model.optimizer.lr=1e-3", "model.scheduler.name=cosine",
                                "model.scheduler.num_warmup_steps=2"])
    model = build_model(cfg.model)
    model.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    got = []
    for _ in range(10):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [1e-3 * s / 2 if s < 2 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(10)]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)
    # constant without warmup: no scheduler at all (the base optimizer)
    cfg2 = compose_cfg("train", ["model=xnemo_tiny", *SHRINK])
    assert isinstance(build_model(cfg2.model).configure_optimizers(), torch.optim.Optimizer)


def test_ema_checkpoint_holds_the_average_of_the_step_weights(compose_cfg, synth_root, tmp_path):
    """ema_decay=d: after steps 1 and 2 the checkpoint's state_dict is d·θ₁ + (1 − d)·θ₂ (θ₁ from a 1-step run of
    the same seed, θ₂ = the raw weights kept in current_model_state); load_model gives the EMA weights."""
    from experiments.train import train
    from lit_models.registry import load_model

    def run(steps, d):
        r = tmp_path / f"s{steps}"
        train(compose_cfg("train", ["experiment=xnemo_synthfaces", *SHRINK, f"data.root={synth_root}",
                                    "data.synth=null", "data.resolution=32", f"run_dir={r}", "debug=fast",
                                    "logger=none", "evaluate_after_train=false", f"trainer.max_steps={steps}",
                                    "trainer.val_check_interval=100", f"model.ema_decay={d}", "data.batch_size=1",
                                    "data.num_frames=2"]))
        return torch.load(r / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu"), r

    d = 0.75
    one, _ = run(1, d)
    two, r2 = run(2, d)
    theta1, theta2, ema = one["current_model_state"], two["current_model_state"], two["state_dict"]
    moved = [k for k in theta2 if theta2[k].is_floating_point() and not torch.equal(theta1[k], theta2[k])]
    assert moved, "training did not change the weights"
    for k in moved:
        torch.testing.assert_close(ema[k], d * theta1[k] + (1 - d) * theta2[k], atol=1e-6, rtol=1e-5)
    loaded = load_model(str(r2 / "checkpoints" / "last.ckpt"))
    assert loaded.loaded_weights == "ema"
    torch.testing.assert_close(loaded.state_dict()[moved[0]], ema[moved[0]])
    # ckpt_weights=raw: the raw training weights θ₂ instead; a checkpoint trained without EMA has no "ema" to serve
    raw = load_model(str(r2 / "checkpoints" / "last.ckpt"), weights="raw")
    assert raw.loaded_weights == "raw"
    for k in moved:
        torch.testing.assert_close(raw.state_dict()[k], theta2[k], atol=0, rtol=0)
    assert load_model(str(r2 / "checkpoints" / "last.ckpt"), weights="ema").loaded_weights == "ema"
    plain = tmp_path / "plain.ckpt"
    torch.save({k: v for k, v in two.items() if k not in ("current_model_state", "averaging_state")}
               | {"state_dict": theta2}, plain)
    assert load_model(str(plain)).loaded_weights == "raw"
    with pytest.raises(ValueError, match="trained without EMA"):
        load_model(str(plain), weights="ema")
    # the evaluation says which weights it scored (metrics.json "weights")
    from experiments.evaluate import evaluate

    res = evaluate(compose_cfg("evaluate", ["experiment=xnemo_synthfaces", *SHRINK, f"data.root={synth_root}",
                                           "data.synth=null", "debug=fast", "logger=none", f"run_dir={tmp_path / 'ev'}",
                                           f"ckpt={r2 / 'checkpoints' / 'last.ckpt'}", "ckpt_weights=raw",
                                           "eval_protocol.max_videos=1", "eval_protocol.num_frames=2"]))
    assert res["weights"] == "raw"
