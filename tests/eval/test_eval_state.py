"""Evaluation state and reliability: train ⇒ evaluate equality, state keyed by model + protocol + data, non-finite
outputs counted, bad clips skipped, one writer, upscaled clips flagged, a state file that loads without unpickling
code."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import lock_held_elsewhere, tiny_run

from eval.protocol import load_protocol
from eval.runner import STATE, run_evaluation
from lit_models.baselines import CopySource
from lit_models.baselines.config import CopySourceConfig


def _proto(*extra):
    return load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "batch_size=2", *extra])


def test_train_then_evaluate_ckpt_gives_the_runs_own_metrics(compose_cfg, synth_root, tmp_path):
    """A tiny run's end-of-training evaluation and `experiments.evaluate ckpt=…/last.ckpt` under
    the same protocol agree to 1e-6 (same frames, same resize, same model resolution, same weights)."""
    from experiments.evaluate import evaluate
    from experiments.train import train

    run = tmp_path / "run"
    train(compose_cfg("train", ["experiment=baseline_direct", *tiny_run(synth_root, run, "logger=csv")]))
    trained = json.loads((run / "metrics.json").read_text())
    cfg = compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"data.root={synth_root}",
                                   "data.synth=null", "data=synthfaces_tiny", f"run_dir={tmp_path / 'eval'}",
                                   "logger=csv", "data.num_workers=0", "eval_protocol=synthfaces_self",
                                   "eval_protocol.max_videos=2", "eval_protocol.num_frames=4"])
    again = evaluate(cfg)
    assert again["protocol_hash"] == trained["protocol_hash"]
    assert again["model_id"] == trained["model_id"]           # the same weights and hyper-parameters
    assert again["num_frames"] == trained["num_frames"] > 0
    assert set(again["metrics"]) == set(trained["metrics"])
    for k, v in trained["metrics"].items():
        assert again["metrics"][k] == pytest.approx(v, abs=1e-6), k


def test_resume_to_train_longer_then_evaluate_reevaluates(compose_cfg, synth_root, tmp_path):
    """`resume=true trainer.max_steps=4` into the run of a 2-step training evaluates the 4-step weights again (the
    2-step run's finished evaluation must not be reused: 0 videos scored, the 2-step numbers under the 4-step
    last.ckpt)."""
    from experiments.evaluate import evaluate
    from experiments.train import train

    run = tmp_path / "run"
    train(compose_cfg("train", ["experiment=baseline_direct", *tiny_run(synth_root, run, "logger=csv")]))
    first = json.loads((run / "metrics.json").read_text())
    train(compose_cfg("train", ["experiment=baseline_direct", *tiny_run(synth_root, run, "logger=csv", "resume=true",
                                                                       "trainer.max_steps=4")]))
    longer = json.loads((run / "metrics.json").read_text())
    assert longer["model_id"] != first["model_id"]
    assert longer["num_videos"] == first["num_videos"] and longer["metrics"]["psnr"] != first["metrics"]["psnr"]
    fresh = evaluate(compose_cfg("evaluate", [f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "data=synthfaces_tiny",
                                              f"data.root={synth_root}", "data.synth=null", "logger=csv",
                                              f"run_dir={tmp_path / 'fresh'}", "data.num_workers=0",
                                              "eval_protocol.max_videos=2", "eval_protocol.num_frames=4"]))
    for k, v in fresh["metrics"].items():
        assert longer["metrics"][k] == pytest.approx(v, abs=1e-6), k


def test_another_model_into_a_used_run_dir_reports_its_own_numbers(tmp_path, fake_data):
    """A second model evaluated into a run_dir that holds a finished evaluation recomputes every video (the first
    model's rows must not be reported under the second model's name)."""
    from lit_models.baselines import DirectRegression
    from lit_models.baselines.config import DirectConfig

    copy = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=3, T=4, size=32), _proto(), tmp_path,
                          progress=False)
    torch.manual_seed(0)
    other = DirectRegression(DirectConfig(resolution=32, base_channels=4, num_down=2))
    res = run_evaluation(other, fake_data(n=3, T=4, size=32), _proto(), tmp_path, progress=False)
    alone = run_evaluation(other, fake_data(n=3, T=4, size=32), _proto(), tmp_path / "alone", progress=False)
    assert res["metrics"]["l1"] != pytest.approx(copy["metrics"]["l1"])
    assert res["metrics"] == pytest.approx(alone["metrics"]) and res["num_frames"] == 9
    assert len(pd.read_csv(tmp_path / "per_frame.csv")) == 9            # no rows of the first model left
    # the same model again: nothing recomputed (finished videos reused under the same model / protocol / data)
    calls = []
    animate = other.animate
    other.animate = lambda *a: calls.append(1) or animate(*a)
    run_evaluation(other, fake_data(n=3, T=4, size=32), _proto(), tmp_path, progress=False)
    assert calls == []
    other.animate = animate
    # other data under the same protocol and model: recomputed
    moved = fake_data(n=3, T=4, size=32, seed=5)
    moved_res = run_evaluation(other, moved, _proto(), tmp_path, progress=False, dataset_key="seed5")
    assert len(moved.decoded) == 3 and moved_res["metrics"]["l1"] != pytest.approx(res["metrics"]["l1"])


class NaNOnVideo(CopySource):
    """Copy-source whose output for the video with a given source colour turns to NaN on some frames."""

    def __init__(self, bad_frames):
        super().__init__(CopySourceConfig())
        self.calls, self.bad_frames = 0, bad_frames

    def animate(self, source, driving):
        out = super().animate(source, driving)
        if self.calls == 1:
            out[0, self.bad_frames] = float("nan")
        self.calls += 1
        return out


def test_nonfinite_outputs_are_counted_and_json_is_valid(tmp_path, fake_data):
    """A video partly turned to NaN does not vanish inside nanmean while the counts claim full coverage:
    nonfinite_frames / nonfinite_videos say so, per_video.csv too, and the JSON stays valid."""
    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "batch_size=1",
                                              "metrics=[l1,psnr,ssim,fid]", "standin_metrics=[fid]"])
    res = run_evaluation(NaNOnVideo([2, 3]), fake_data(n=3, T=4, size=32), proto, tmp_path, progress=False)
    assert res["nonfinite_frames"] == 2 and res["nonfinite_videos"] == 1 and res["num_frames"] == 9
    videos = pd.read_csv(tmp_path / "per_video.csv")
    assert list(videos.nonfinite_frames) == [0, 2, 0]
    frames = pd.read_csv(tmp_path / "per_frame.csv")
    assert frames.l1.isna().sum() == 2        # exactly the two NaN frames are unscored
    import math

    assert all(math.isfinite(v) for v in res["metrics"].values())     # FID never saw the NaN frames
    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    # tables show the count
    from eval.table import make_table

    md = make_table([tmp_path], tmp_path / "table", use_wandb=False)["md"].read_text()
    assert "nonfinite_videos" in md and "nonfinite_frames" in md


def test_upscaled_videos_are_counted(tmp_path, fake_data):
    """Clips smaller than the protocol resolution are upscaled, and counted and named (not scored without a
    word)."""
    res = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=16), _proto(), tmp_path,
                         progress=False)
    assert res["upscaled_videos"] == 2 and res["upscaled"] == ["vid0", "vid1"]
    ok = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=32), _proto(), tmp_path / "b",
                        progress=False)
    assert ok["upscaled_videos"] == 0


def test_bad_clip_found_during_evaluation_is_skipped_counted_and_named(tmp_path, synth_root):
    """A clip that passed the scan but fails to decode during the evaluation does not crash it (nor every retry):
    the evaluation finishes, and metrics.json names the clip and the error."""
    from datamodules import VideoClipDataModule

    root = tmp_path / "root"
    shutil.copytree(synth_root, root)
    dm = VideoClipDataModule(root=str(root), resolution=32, num_workers=0, test_fraction=0.25, val_fraction=0.1,
                             use_scan_cache=False)
    proto = _proto("max_videos=3")
    ds = dm.eval_dataset("test", "self", max_videos=3)
    victim = Path(ds.items[1].driving.path)
    victim.write_bytes(b"\x00" * 64)          # corrupted after the scan (e.g. a network filesystem hiccup)
    res = run_evaluation(CopySource(CopySourceConfig()), dm, proto, tmp_path / "eval", progress=False)
    assert res["num_videos"] == 2 and res["skipped_videos"] == 1
    (vid, err), = res["skipped"].items()
    assert victim.stem in vid and err
    # a rerun (same model, protocol and data fingerprint) keeps the finished videos and the named bad clip
    again = run_evaluation(CopySource(CopySourceConfig()), dm, proto, tmp_path / "eval", progress=False)
    assert again["skipped_videos"] == 1 and again["metrics"] == pytest.approx(res["metrics"])


def test_second_writer_fails_at_once_naming_the_holder(tmp_path, fake_data):
    """Two evaluations into one run_dir: the second fails at once naming the holder (both succeeding would double
    every row)."""
    from toolbox.locks import DirectoryLocked

    with lock_held_elsewhere(tmp_path, "evaluation") as holder:
        t0 = time.monotonic()
        with pytest.raises(DirectoryLocked, match=f"pid {holder.pid}"):
            run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=32), _proto(), tmp_path,
                           progress=False)
        assert time.monotonic() - t0 < 5
        assert not (tmp_path / "per_frame.csv").exists() and not (tmp_path / "metrics.json").exists()
    res = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=32), _proto(), tmp_path,
                         progress=False)
    assert res["num_frames"] == 4


def test_state_file_loads_without_running_code(tmp_path, fake_data):
    """eval_state.pt is read with weights_only=True; a crafted pickle is refused, not run."""
    run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=32), _proto("metrics=[l1,fid]",
                   "standin_metrics=[fid]"), tmp_path, progress=False)
    torch.load(tmp_path / STATE, weights_only=True)         # what the runner does

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"protocol_hash": "x", "payload": Evil()}, tmp_path / STATE)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=32), _proto(), tmp_path,
                       progress=False)
    assert not marker.exists()
