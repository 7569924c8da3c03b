"""MRFA configs: the sweeps (K ∈ {0, 2, 4, 6} in the official meaning), the real-data sweep builds, the official
evaluation protocol."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_models.mrfa import MRFA


def test_demo_sweep_runs_the_official_k_values(compose_cfg):
    from omegaconf import OmegaConf

    cfg = compose_cfg("train", ["sweep=mrfa_refine_iters"])
    hcfg = OmegaConf.load(Path(__file__).resolve().parents[2]
                          / "experiments/configs/sweep/mrfa_refine_iters.yaml")
    assert str(hcfg.hydra.sweeper.params["model.refine_iters"]) == "0,2,4,6"
    assert cfg.model.name == "mrfa_tiny" and cfg.model.refine_schedule == "official"
    for K in (0, 2, 4, 6):
        m = MRFA(compose_cfg("train", ["sweep=mrfa_refine_iters", f"model.refine_iters={K}"]).model)
        assert len(m.decoder.refined) == K and m.decoder.num_scales == 6


@pytest.mark.parametrize("K", [0, 6])
def test_vox_sweep_composes_and_builds(compose_cfg, K, tmp_path):
    for i in range(8):   # a FOMM root of 8 identities (names only: the recipe counts identities, decodes nothing)
        d = tmp_path / "train" / f"id{10000 + i}#v#000000#000100.mp4"
        d.mkdir(parents=True)
        (d / "0000000.png").touch()
    cfg = compose_cfg("train", ["sweep=mrfa_refine_iters_vox", f"data.root={tmp_path}", f"model.refine_iters={K}"])
    assert (cfg.model.name, cfg.model.resolution, cfg.model.optimizer.lr, tuple(cfg.model.optimizer.betas)) == ("mrfa", 256, 2e-4,
                                                                                           (0.5, 0.999))
    # the official global batch 80 split over the 8 DDP processes (run.py); 8 ids × 150 / 80 = 15 steps per epoch
    assert cfg.data.layout == "fomm" and cfg.data.resolution == 256 and cfg.data.batch_size == 10
    assert cfg.data.steps_per_epoch == 15 and cfg.trainer.max_steps == 1500
    assert list(cfg.model.scheduler.milestones) == [int(0.6 * cfg.trainer.max_steps), int(0.9 * cfg.trainer.max_steps)]
    assert cfg.eval_protocol.name == "mrfa_reconstruction"
    with torch.device("meta"):
        m = MRFA(cfg.model)
    n = sum(p.numel() for p in m.parameters())
    assert (n == 114_339_206) if K == 6 else (n < 114_339_206 - 10_000_000)   # prior_only: no encoders / refiner


def test_mrfa_reconstruction_protocol_is_the_official_one():
    from eval.protocol import load_protocol

    p = load_protocol("mrfa_reconstruction")
    assert (p.mode, p.num_frames, p.stride, p.max_videos, p.resolution) == ("self", 0, 1, 1000, 256)
    assert list(p.metrics) == ["l1", "lpips_vgg", "lpips_vgg_official", "psnr"] and p.include_source_frame  # frame 0 too
    vox = load_protocol("vox_self")
    assert not vox.include_source_frame and vox.max_videos == 0


def test_benchmark_without_official_checkout_is_skipped(capsys, monkeypatch, tmp_path):
    from benchmarks.mrfa import main

    monkeypatch.delenv("MRFA_OFFICIAL", raising=False)
    assert main([]) == 0 and "skipped" in capsys.readouterr().out
    assert main(["--official", str(tmp_path / "absent")]) == 0 and "skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="K = 6 and K = 0"):
        main(["--official", str(tmp_path), "--ks", "4"])
