"""GPU readiness: every method's tiny config trains under 16-bit mixed precision through the real entry point
(`experiments.train.train`, Lightning `precision=bf16-mixed` / `16-mixed`), and the full-size models (MRFA 256²,
X-Portrait / X-NeMo 512² with SD-1.5-shaped random weights) run one forward + backward at batch 1 with activation
checkpointing, with peak memory printed next to `experiments.plan`'s estimate."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]
TINY = {"mrfa": "mrfa_synthfaces", "xportrait": "xportrait_synthfaces", "xnemo": "xnemo_synthfaces",
        "interanimate": "interanimate_synthfaces", "imposter": "imposter_tiny"}
# the GPU image has no dlib (its face models ship in a 100 MB wheel): InterAnimate's ArcFace/dlib ID preserver is off
EXTRA = {"interanimate": ["model.use_id_preserver=false"]}


@pytest.fixture(scope="module")
def synth_gpu(tmp_path_factory) -> Path:
    from datamodules.config import SynthConfig
    from datamodules.synthfaces import render_dataset

    root = tmp_path_factory.mktemp("synth_gpu")
    render_dataset(root, SynthConfig(num_identities=8, clips_per_identity=2, num_frames=12, resolution=64,
                                     hand_prob=0.5, num_cross_pairs=4, seed=0))
    return root


def _losses(run_dir: Path) -> list[float]:
    import pandas as pd

    df = pd.concat([pd.read_csv(p) for p in sorted((run_dir / "csv").glob("version_*/metrics.csv"))])
    return [float(v) for v in df["train/loss"].dropna()]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("method", sorted(TINY))
def test_tiny_config_trains_in_mixed_precision_on_the_gpu(method, precision, synth_gpu, tmp_path):
    from experiments.compose import compose
    from experiments.train import train

    run = tmp_path / "run"
    cfg = compose("train", [f"experiment={TINY[method]}", *EXTRA.get(method, []), "debug=fast", f"data.root={synth_gpu}", "data.synth=null", "data.decoder=pyav",
                            f"run_dir={run}", "logger=csv", "trainer.accelerator=gpu",
                            "trainer.devices=1", f"trainer.precision={precision}", "trainer.max_steps=3",
                            "trainer.limit_val_batches=0", "evaluate_after_train=false", "data.num_workers=0"])
    torch.cuda.reset_peak_memory_stats()
    result = train(cfg)
    losses = _losses(run)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    ckpt = torch.load(result["ckpt"], map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    print(f"{method} {precision}: losses {[round(v, 4) for v in losses]}, "
          f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


# MRFA with the offline perceptual stand-in (ImageNet VGG-19 weights are not on the GPU machine): same networks
FULL = {"mrfa": ["model=mrfa", "model.perceptual=pyramid_l1_ssim", "data.resolution=256", "data.num_frames=1"],
        "xportrait": ["model=xportrait", "data.resolution=512", "data.num_frames=8"],
        "xnemo": ["model=xnemo", "data.resolution=512", "data.num_frames=8"]}


@pytest.mark.parametrize("method", sorted(FULL))
def test_full_size_forward_backward_batch1_with_activation_checkpointing(method):
    """Random (SD-1.5-shaped) weights, batch 1, gradient checkpointing on: finite loss and gradients; peak memory
    printed beside the plan's (params + grads + activations; no optimizer step here)."""
    from experiments.compose import compose
    from experiments.plan import _architecture_only, activation_bytes, build_meta_model, meta_batch
    from lit_models.registry import build_model

    cfg = compose("train", [*FULL[method], "data.batch_size=1", "run_dir=/nonexistent"])
    if "gradient_checkpointing" in cfg.model:
        assert cfg.model.gradient_checkpointing, "the full configs train with activation checkpointing"
    est, _ = activation_bytes(build_meta_model(cfg), cfg, 2)
    dev = torch.device("cuda")
    with _architecture_only(cfg.model):
        model = build_model(cfg.model)
    model.to(dev).train()
    batch = {k: (torch.rand(v.shape, device=dev) if torch.is_tensor(v) else v) for k, v in meta_batch(cfg).items()}
    batch["target"] = batch["driving"]
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms = model.compute_losses(batch)
    loss = model.weighted_total(terms)
    loss.backward()
    torch.cuda.synchronize()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert math.isfinite(float(loss)) and grads and all(torch.isfinite(g).all() for g in grads)
    n = sum(p.numel() for p in model.parameters())
    print(f"{method} full: {n / 1e6:.1f} M params, loss {float(loss):.4f}, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
          f"(plan: activations {est / 2**30 if est else float('nan'):.2f} GiB + fp32 params/grads "
          f"{8 * n / 2**30:.2f} GiB)")
