"""eval.runner: streaming, result files, aggregation, resume after an interruption, protocol hashing, logging."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from eval.protocol import load_protocol, protocol_hash
from eval.runner import run_evaluation
from lit_models.baselines import CopySource
from lit_models.baselines.config import CopySourceConfig


def _protocol(*extra):
    return load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "batch_size=2", *extra])


class CountingCopy(CopySource):
    """Copy-source that counts animate calls and can fail after ``fail_after`` videos (a simulated crash)."""

    def __init__(self, fail_after: int | None = None):
        super().__init__(CopySourceConfig())
        self.videos_seen = 0
        self.fail_after = fail_after

    def animate(self, source, driving):
        if self.fail_after is not None and self.videos_seen + source.shape[0] > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.videos_seen += source.shape[0]
        return super().animate(source, driving)


def test_copy_source_metrics_match_direct_computation(tmp_path, fake_data):
    data = fake_data(n=3, T=4, size=32)
    res = run_evaluation(CopySource(CopySourceConfig()), data, _protocol(), tmp_path, progress=False,
                         ckpt="x.ckpt", overrides=["a=1"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["metrics"] == pytest.approx(res["metrics"])
    assert on_disk["protocol"] == "synthfaces_self" and on_disk["protocol_hash"] == protocol_hash(_protocol())
    assert on_disk["ckpt"] == "x.ckpt" and on_disk["overrides"] == ["a=1"] and on_disk["standin"] is False
    assert data.calls[0]["mode"] == "self" and data.calls[0]["num_frames"] == 4
    # frame 0 is the source in self mode and is not scored: 3 videos × 3 frames
    frames = pd.read_csv(tmp_path / "per_frame.csv")
    assert len(frames) == 9 and sorted(frames.frame.unique()) == [1, 2, 3]
    # L1 / PSNR by hand over every scored frame
    l1, psnr = [], []
    for i in range(3):
        v = fake_data(n=3, T=4, size=32).video(i)
        for t in range(1, 4):
            d = (v["source"].double() - v["target"][t].double())
            l1.append(d.abs().mean().item())
            psnr.append(10 * np.log10(1.0 / d.pow(2).mean().item()))
    assert res["metrics"]["l1"] == pytest.approx(np.mean(l1), rel=1e-6)
    assert res["metrics"]["psnr"] == pytest.approx(np.mean(psnr), rel=1e-6)
    videos = pd.read_csv(tmp_path / "per_video.csv")
    assert list(videos.video_id) == ["vid0", "vid1", "vid2"] and (videos.num_frames == 3).all()
    assert videos.l1.mean() == pytest.approx(res["metrics"]["l1"], rel=1e-6)


def test_include_source_frame_scores_frame0(tmp_path, fake_data):
    res = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=1, T=3, size=32),
                         _protocol("include_source_frame=true", "metrics=[l1,ssim]"), tmp_path, progress=False)
    frames = pd.read_csv(tmp_path / "per_frame.csv")
    assert list(frames.frame) == [0, 1, 2] and frames.l1[0] == 0 and frames.ssim[0] == pytest.approx(1.0)
    assert res["num_frames"] == 3


def test_resume_skips_finished_videos_and_matches_uninterrupted(tmp_path, fake_data):
    proto = _protocol("batch_size=1", "metrics=[l1,psnr,ssim,fid]", "standin_metrics=[fid]",
                      "use_fid_reference_cache=false")
    full = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=4, T=4, size=32), proto, tmp_path / "full",
                          progress=False)
    crashy = CountingCopy(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(crashy, fake_data(n=4, T=4, size=32), proto, tmp_path / "resumed", progress=False)
    assert len(pd.read_csv(tmp_path / "resumed" / "per_video.csv")) == 2
    again = CountingCopy()
    res = run_evaluation(again, fake_data(n=4, T=4, size=32), proto, tmp_path / "resumed", progress=False)
    assert again.videos_seen == 2                       # only the two unfinished videos were animated
    assert res["metrics"] == pytest.approx(full["metrics"], rel=1e-9)   # FID state restored exactly
    assert "fid_STANDIN" in res["metrics"] and "fid" not in res["metrics"] and res["standin"] is True
    assert len(pd.read_csv(tmp_path / "resumed" / "per_frame.csv")) == 4 * 3


def test_resume_refuses_another_protocol(tmp_path, fake_data):
    run_evaluation(CopySource(CopySourceConfig()), fake_data(n=1, T=3, size=32), _protocol(), tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="protocol hash"):
        run_evaluation(CopySource(CopySourceConfig()), fake_data(n=1, T=3, size=32), _protocol("stride=2"), tmp_path,
                       progress=False)


def test_resizes_once_to_protocol_resolution(tmp_path, fake_data):
    # data at 32², protocol at 16²: metrics see 16² frames (SSIM differs from the 32² evaluation)
    r32 = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=1, T=3, size=32), _protocol(), tmp_path / "a",
                         progress=False)
    r16 = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=1, T=3, size=32), _protocol("resolution=16"),
                         tmp_path / "b", progress=False)
    assert r16["metrics"]["ssim"] != pytest.approx(r32["metrics"]["ssim"], abs=1e-4)


class _FakeWandbLogger:
    """Quacks like Lightning's WandbLogger (the runner dispatches on the class name)."""

    def __init__(self):
        self.scalars, self.logged = {}, []
        self.experiment = self

    def log_metrics(self, metrics, step=None):
        self.scalars.update(metrics)

    def log(self, payload):
        self.logged.append(payload)


_FakeWandbLogger.__name__ = "WandbLogger"


def test_logs_scalars_table_and_grid(tmp_path, fake_data):
    import wandb

    logger = _FakeWandbLogger()
    run_evaluation(CopySource(CopySourceConfig()), fake_data(n=2, T=3, size=32), _protocol(), tmp_path,
                   loggers=[logger], progress=False)
    assert set(logger.scalars) == {"eval/synthfaces_self/l1", "eval/synthfaces_self/psnr", "eval/synthfaces_self/ssim"}
    payload = logger.logged[0]
    table = payload["eval/synthfaces_self/per_video"]
    assert isinstance(table, wandb.Table) and len(table.data) == 2
    assert isinstance(payload["eval/synthfaces_self/grid"], wandb.Video)
    assert (tmp_path / "eval_grid.mp4").stat().st_size > 0


def test_real_datamodule_self_and_synth_cross(tmp_path, synth_root):
    """The real VideoClipDataModule on SynthFaces: self (frame 0 as source) and synth_cross (GT target)."""
    from datamodules import VideoClipDataModule

    dm = VideoClipDataModule(root=str(synth_root), resolution=32, num_workers=0, test_fraction=0.25, val_fraction=0.1)
    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=4", "max_videos=2"])
    res = run_evaluation(CopySource(CopySourceConfig()), dm, proto, tmp_path / "self", progress=False)
    videos = pd.read_csv(tmp_path / "self" / "per_video.csv")
    assert len(videos) == 2 and videos.video_id.is_unique and res["num_frames"] == 2 * 3
    assert 0 < res["metrics"]["l1"] < 0.5 and 0 < res["metrics"]["ssim"] < 1
    # resume with everything finished: nothing decoded again, same numbers
    again = run_evaluation(CopySource(CopySourceConfig()), dm, proto, tmp_path / "self", progress=False)
    assert again["metrics"] == pytest.approx(res["metrics"])

    cross = load_protocol("synthfaces_cross", ["resolution=32", "num_frames=3", "max_videos=2", "metrics=[l1,psnr,ssim]"])
    res_x = run_evaluation(CopySource(CopySourceConfig()), dm, cross, tmp_path / "cross", progress=False)
    ids = pd.read_csv(tmp_path / "cross" / "per_video.csv").video_id
    assert all("<-" in v for v in ids)     # source identity <- driving clip
    assert res_x["num_frames"] == 2 * 3     # cross mode scores every frame (the source is another identity)


def test_cross_mode_rejects_full_reference_metrics(tmp_path, fake_data):
    proto = load_protocol("vox_cross", ["resolution=32", "metrics=[l1,ssim]", "pairs_csv=null"])
    with pytest.raises(ValueError, match=r"no ground truth.*\['l1', 'ssim'\]"):
        run_evaluation(CopySource(CopySourceConfig()), fake_data(n=1, T=3, size=32), proto, tmp_path, progress=False)
