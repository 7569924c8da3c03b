"""trainer=fsdp: Lightning's FSDPStrategy (sharded parameters / gradients / Adam states, FSDP units per
ResnetBlock2D, activation checkpointing) on 2 CPU processes (gloo) with a tiny diffusion config, against DDP."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_scale_ddp import REPO, losses, state  # noqa: E402

TINY = ["experiment=xnemo_synthfaces", "debug=fast", "model.resolution=32", "data.resolution=32",
        "model.unet.sample_size=8", "data.batch_size=2", "data.num_frames=2", "trainer.limit_val_batches=0",
        "evaluate_after_train=false", "logger=csv", "trainer.max_steps=2", "trainer.devices=2",
        "trainer.accelerator=cpu", "trainer.precision=32-true"]


def run(synth_root: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "MASTER_", "WORLD_SIZE"))}
    env.update(PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               PORTRAITLAB_RUNS=str(run_dir.parent / "hydra_runs"))
    out = subprocess.run([sys.executable, "-m", "experiments.train", *TINY, f"data.root={synth_root}", "data.synth=null",
                          f"run_dir={run_dir}", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-4000:])
    return out


def test_fsdp_strategy_from_the_trainer_config(compose_cfg):
    from lightning.pytorch.strategies import FSDPStrategy

    from experiments.runtime import ConfigError, build_strategy

    cfg = compose_cfg("train", ["trainer=fsdp", "run_dir=/nonexistent"])
    strategy = build_strategy(cfg.trainer)
    assert type(strategy) is FSDPStrategy and str(strategy.sharding_strategy).endswith("FULL_SHARD")
    from diffusers.models.resnet import ResnetBlock2D

    recompute = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]   # Lightning's ModuleWrapPolicy
    units = strategy.kwargs["auto_wrap_policy"]
    assert set(recompute._module_classes) == set(units._module_classes) == {ResnetBlock2D}
    assert cfg.trainer.precision == "bf16-mixed"
    cpu = build_strategy(compose_cfg("train", ["trainer=fsdp", "trainer.accelerator=cpu", "run_dir=/x"]).trainer)
    assert isinstance(cpu, FSDPStrategy) and type(cpu) is not FSDPStrategy and cpu._determine_device_ids() is None
    with pytest.raises(ConfigError, match="fsdp_sharding_strategy"):
        build_strategy(compose_cfg("train", ["trainer=fsdp", "trainer.fsdp_sharding_strategy=ALL", "run_dir=/x"]).trainer)
    with pytest.raises(ConfigError, match="trainer.strategy=fsdp"):
        build_strategy(compose_cfg("train", ["trainer=ddp_cpu", "trainer.activation_checkpointing=[torch.nn.Linear]",
                                             "run_dir=/x"]).trainer)


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_like_ddp(synth_root, tmp_path):
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    run(synth_root, fsdp, "trainer=fsdp", "evaluate_after_train=true", "eval_protocol.max_videos=3",
        "eval_protocol.num_frames=4", "eval_protocol.metrics=[l1,psnr,ssim]")
    run(synth_root, ddp, "trainer=ddp_cpu", "trainer.strategy=ddp_find_unused_parameters_true")   # X-NeMo: some
    # parameters get no gradient in a training step (e.g. the unconditional null tokens when no condition is dropped)
    a, b = state(fsdp), state(ddp)
    assert a["global_step"] == b["global_step"] == 2
    # the full (consolidated) state dict: every parameter, unsharded, same names as DDP's
    assert set(a["state_dict"]) == set(b["state_dict"])
    # step 0 sees the same weights, batch and noise on every rank: FSDP's sharded forward (+ recomputed blocks)
    # gives DDP's loss; after Adam steps the weights agree except where a gradient is rounding noise (±lr flips)
    la, lb = losses(fsdp), losses(ddp)
    assert la.iloc[0] == pytest.approx(lb.iloc[0], abs=1e-5)
    wa = torch.cat([v.double().flatten() for k, v in sorted(a["state_dict"].items()) if v.is_floating_point()])
    wb = torch.cat([v.double().flatten() for k, v in sorted(b["state_dict"].items()) if v.is_floating_point()])
    close = ((wa - wb).abs() < 1e-5).float().mean().item()
    print(f"FSDP vs DDP: step-0 loss {la.iloc[0]:.6f} vs {lb.iloc[0]:.6f}, steps {list(la.values)} vs "
          f"{list(lb.values)}; weights within 1e-5: {close:.4%}, max |diff| {(wa - wb).abs().max().item():.2e}")
    assert close > 0.99
    # evaluation after FSDP training: a consolidated copy of the weights, sharded over the 2 ranks, each video once
    metrics = json.loads((fsdp / "metrics.json").read_text())
    assert metrics["num_videos"] == 3 and pd.read_csv(fsdp / "per_video.csv")["video_id"].is_unique
    assert all(map(lambda v: v == v, metrics["metrics"].values()))   # no NaN
    assert (wa - wb).abs().max().item() <= 2 * 2 * 1e-3 + 1e-6   # Adam: at most lr per step and run
