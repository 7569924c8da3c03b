"""Pre-flight: weights, the evaluation set with the configured decoder, the protocol — checked before training;
`experiments.train` fails in seconds naming the problem instead of after its training steps."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import tiny_run

from eval.preflight import PreflightError, preflight


def test_train_fails_before_training_when_metric_weights_are_missing(compose_cfg, synth_root, tmp_path, monkeypatch):
    from experiments.train import train

    monkeypatch.setenv("PORTRAITLAB_ALEXNET", str(tmp_path / "absent" / "alexnet-owt-7be5be79.pth"))
    run = tmp_path / "run"
    cfg = compose_cfg("train", ["experiment=baseline_direct",
                                *tiny_run(synth_root, run, "logger=csv", "eval_protocol.metrics=[l1,lpips]")])
    with pytest.raises(PreflightError, match=r"(?s)nothing was trained.*alexnet_imagenet.*lpips_alex.*"
                                             r"eval\.weights fetch alexnet_imagenet"):
        train(cfg)
    assert not (run / "checkpoints").exists()          # not one training step
    # a stand-in LPIPS needs no weights: pre-flight passes
    ok = compose_cfg("train", ["experiment=baseline_direct",
                               *tiny_run(synth_root, run, "logger=csv", "eval_protocol.metrics=[l1,lpips]",
                                         "eval_protocol.standin_metrics=[lpips]")])
    from datamodules import VideoClipDataModule

    report = preflight({"eval_protocol": ok.eval_protocol}, VideoClipDataModule(ok.data))
    assert report["weights"] == [] and report["items_decoded"] == 2


def test_protocol_problems_name_their_keys(synth_root):
    from eval.protocol import load_protocol

    from omegaconf.errors import ValidationError

    with pytest.raises(ValidationError, match="resize"):   # a closed choice: the schema's enum refuses it at load
        load_protocol("synthfaces_self", ["resize=lanczos"])
    bad = load_protocol("synthfaces_self", ["metrics=[l1,l2]"])
    cross = load_protocol("vox_cross", ["metrics=[psnr]", "pairs_csv=null"])
    with pytest.raises(PreflightError) as e:
        preflight({"eval_protocol": bad, "extra_eval.x": cross}, None)
    msg = str(e.value)
    assert "eval_protocol.metrics: unknown metric 'l2'" in msg
    assert "extra_eval.x.metrics: 'psnr' needs ground truth" in msg


def test_clip_that_the_configured_decoder_cannot_read_is_named_before_training(tmp_path, synth_root):
    from datamodules import VideoClipDataModule
    from eval.protocol import load_protocol

    root = tmp_path / "root"
    shutil.copytree(synth_root, root)
    dm = VideoClipDataModule(root=str(root), resolution=32, num_workers=0, test_fraction=0.25, val_fraction=0.1,
                             use_scan_cache=False)
    proto = load_protocol("synthfaces_self", ["num_frames=4", "max_videos=2"])
    assert preflight({"eval_protocol": proto}, dm)["items_decoded"] == 2
    victim = Path(dm.eval_dataset("test", "self", max_videos=2).items[1].driving.path)
    victim.write_bytes(victim.read_bytes()[:300])     # broken after the scan
    with pytest.raises(PreflightError, match=f"{victim.name} does not decode with data.decoder=decord"):
        preflight({"eval_protocol": proto}, dm)
