"""The DataModule: batch dict (shapes, dtypes, ranges, annotations), exact resumable stream, eval sets."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from datamodules.datamodule import ResumableIndexSampler, VideoClipDataModule
from datamodules.dataset import FrameTransform, batch_to_float, collate_clips
from helpers import make_datamodule
from media import write_video


DATA = dict(resolution=32, num_frames=3, batch_size=2, num_workers=0, steps_per_epoch=3, eval_num_frames=4,
            val_fraction=0.15, test_fraction=0.25, use_scan_cache=False)


@pytest.fixture(scope="module")
def dm(synth_root):
    return make_datamodule(synth_root, DATA)


def test_composed_config_builds_the_datamodule(compose_cfg, synth_root):
    cfg = compose_cfg("train", ["data=synthfaces_tiny", f"data.root={synth_root}", "data.num_workers=0",
                                "data.resolution=32", "data.batch_size=3", "data.synth=null"])
    dm = VideoClipDataModule(cfg.data)           # (synth=null: the session's small render is used as it is)
    assert dm.cfg.resolution == 32 and dm.cfg.layout == "fomm"
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["source"].shape == (3, 3, 32, 32)


def test_train_batch(dm, synth_root):
    assert dm.summary["usable"] == 16 and dm.summary["skipped"] == {}
    b = next(iter(dm.train_dataloader()))
    assert b["source"].shape == (2, 3, 32, 32) and b["driving"].shape == (2, 3, 3, 32, 32)
    assert b["target"] is b["driving"]                     # self-reenactment: one tensor, not a copy
    for k in ("source", "driving"):
        assert b[k].dtype == torch.float32 and 0 <= b[k].min() and b[k].max() <= 1 and b[k].std() > 0.05
    assert b["keypoints"].shape[:2] == (2, 3) and b["keypoints"].shape[-1] == 2
    assert set(b["masks"]) == {"face", "hand"} and b["masks"]["face"].shape == (2, 3, 1, 32, 32)
    assert b["meta"]["frame_indices"].shape == (2, 3)
    # the source frame is another frame of the same clip
    for i in range(2):
        assert int(b["meta"]["source_index"][i]) not in b["meta"]["frame_indices"][i].tolist()
    # annotations follow the resize: 64² → 32² halves SynthFaces' keypoints (pixel centres at integers)
    clip = b["meta"]["clip_id"][0]
    z = np.load(synth_root / "meta" / f"{clip.split('/')[-1]}.npz")
    idx = b["meta"]["frame_indices"][0].numpy()
    np.testing.assert_allclose(b["keypoints"][0].numpy(), (z["keypoints"][idx] + 0.5) * 0.5 - 0.5, atol=1e-4)
    np.testing.assert_allclose(b["masks"]["face"][0].mean((1, 2, 3)).numpy(),
                               z["masks_face"][idx].mean((1, 2)), atol=0.02)


def test_stream_is_a_pure_function_of_the_index(dm):
    a, b = dm.train_dataset(), make_datamodule(dm.cfg.root, DATA).train_dataset()
    for i in (0, 7, 123456):
        x, y = a[i], b[i]
        assert torch.equal(x["source"], y["source"]) and torch.equal(x["driving"], y["driving"])
        assert x["meta"]["frame_indices"].tolist() == y["meta"]["frame_indices"].tolist()
    assert not torch.equal(a[0]["driving"], a[1]["driving"])
    # another seed, another stream
    c = make_datamodule(dm.cfg.root, DATA, seed=1).train_dataset()
    assert any(c.draw(i) != a.draw(i) for i in range(8))


def test_uint8_transport_converts_to_the_same_floats(dm):
    """Under a Trainer, workers ship uint8 and on_after_batch_transfer makes the float32 batch."""
    f = dm.train_dataset()
    u = dm.train_dataset(as_uint8=True)
    bf = collate_clips([f[3], f[4]])
    bu = collate_clips([u[3], u[4]])
    assert bu["driving"].dtype == torch.uint8 and bu["driving"].shape == (2, 3, 32, 32, 3)   # channels last
    assert bu["masks"]["face"].dtype == torch.uint8
    conv = dm.on_after_batch_transfer(bu, 0)
    assert conv["target"] is conv["driving"]
    for k in ("source", "driving"):
        assert conv[k].dtype == torch.float32
        torch.testing.assert_close(conv[k], bf[k], atol=1e-6, rtol=0)
    torch.testing.assert_close(conv["masks"]["hand"], bf["masks"]["hand"], atol=1e-6, rtol=0)
    assert batch_to_float(bf) is bf and bf["driving"].dtype == torch.float32


def test_resumed_sampler_is_the_tail_of_a_fresh_one():
    fresh = list(ResumableIndexSampler(10))
    assert list(ResumableIndexSampler(6, start=4)) == fresh[4:]
    # DDP: ranks take disjoint strides whose union is the single-process stream
    r0, r1 = list(ResumableIndexSampler(5, start=0, rank=0, world_size=2)), list(ResumableIndexSampler(5, rank=1, world_size=2))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == fresh
    # the start is read at every epoch (iteration), from the trainer's position
    pos = {"v": 0}
    s = ResumableIndexSampler(3, start_fn=lambda: pos["v"])
    assert list(s) == [0, 1, 2]
    pos["v"] = 3
    assert list(s) == [3, 4, 5]


def test_lightning_resume_continues_the_exact_stream(dm, tmp_path):
    """Fit 4 steps (checkpoint at 2, mid-epoch); a run resumed from it sees the same samples at steps 3-4."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, i):
            assert batch["driving"].dtype == torch.float32 and batch["target"] is batch["driving"]
            self.seen.append(batch["meta"]["index"].tolist())
            return (self.w - batch["driving"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(max_steps, ckpt=None, acc=2):
        m = Recorder()
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, accumulate_grad_batches=acc,
                            default_root_dir=tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck",
                                                                                  every_n_train_steps=2, save_top_k=-1)])
        data = VideoClipDataModule(dict(dm.cfg.__dict__, resolution=16, num_frames=1, steps_per_epoch=6))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(m, datamodule=data, ckpt_path=ckpt)
        return m.seen

    full = fit(4)                                  # 4 optimizer steps × accumulate 2 = 8 batches; epochs of 6
    assert len(full) == 8 and len({i for b in full for i in b}) == 16   # no repeats across the epoch boundary
    ckpt = sorted((tmp_path / "ck").glob("*step=2*.ckpt"))[0]
    resumed = fit(4, ckpt=str(ckpt))
    assert resumed == full[4:]


def test_bad_files_are_skipped_at_setup(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "train" / "id9999#bad#0#1.mp4").write_bytes(b"")
    write_video(root / "train" / "id9998#short#0#2.mp4", num_frames=2)
    with pytest.warns(UserWarning, match="skipped 2"):
        dm = make_datamodule(root, DATA, use_scan_cache=True)
    assert dm.summary["skipped"] == {"empty": 1, "too_short": 1} and dm.summary["usable"] == 16
    assert json.loads((root / ".portraitlab_scan.json").read_text())["probes"]


def test_decode_failure_mid_epoch_draws_another_clip(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    dm = make_datamodule(root, DATA)
    ds = dm.train_dataset()
    c, _, _ = ds.draw(0)
    (root / ds.records[c].path.split(str(root) + "/")[1]).write_bytes(b"\0" * 64)  # the file went bad after setup
    with pytest.warns(UserWarning, match="failed to decode"):
        s = ds[0]
    assert s["meta"]["clip_id"] != ds.records[c].clip_id and s["driving"].shape == (3, 3, 32, 32)


def test_eval_self(dm):
    ds = dm.eval_dataset("test", "self", num_frames=4, stride=2)
    assert len(ds) == len(dm.splits["test"])
    b = next(iter(dm.eval_dataloader(ds, batch_size=2)))
    assert b["driving"].shape == (2, 4, 3, 32, 32) and b["meta"]["frame_indices"][0].tolist() == [0, 2, 4, 6]
    assert torch.equal(b["source"], b["driving"][:, 0]) and b["target"] is b["driving"]
    # max_videos interleaves identities: the first two videos are of two identities
    two = dm.eval_dataset("test", "self", max_videos=2)
    assert len(two) == 2 and len({it.source.identity for it in two.items}) == 2
    # val and test identities are disjoint from training
    train_ids = {r.identity for r in dm.splits["train"]}
    assert not train_ids & {r.identity for s in ("val", "test") for r in dm.splits[s]}


def test_eval_cross_and_synth_cross(dm, synth_root, tmp_path):
    out = tmp_path / "pairs.csv"
    ds = dm.eval_dataset("test", "cross", num_frames=3, pairs_csv=str(out))
    assert out.exists() and len(ds) == dm.cfg.num_cross_pairs
    assert all(it.source.identity != it.driving.identity for it in ds.items)
    b = ds[0]
    # a real cross-identity pair has no ground truth: no `target` key at all (no stand-in, no private flag)
    assert "target" not in b and not any(k.startswith("_") for k in b)
    assert "target" not in next(iter(dm.eval_dataloader(ds, batch_size=2)))
    # native-size evaluation frames: no resize, the data's own pixels (the protocol resizes them)
    native = dm.eval_dataset("test", "self", num_frames=3, native=True)
    stored = native.readers.get(native.items[0].driving).get_frames([0])
    assert native[0]["driving"].shape[-2:] == stored.shape[1:3]
    assert dm.eval_dataset("test", "cross", num_frames=3, pairs_csv=str(out)).items[0].driving.path == ds.items[0].driving.path
    gt = dm.eval_dataset("test", "synth_cross", num_frames=3)
    s = next(iter(dm.eval_dataloader(gt, batch_size=1)))
    assert s["target"].shape == s["driving"].shape == (1, 3, 3, 32, 32)
    assert s["target"] is not s["driving"] and not torch.equal(s["target"], s["driving"])


def test_frame_transform_crops():
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    frames[:, 10:30, 30:50] = 200
    t = FrameTransform(20, "meta")
    box = t.box(40, 60, [30, 10, 50, 30])
    np.testing.assert_allclose(t.frames(frames, box).numpy(), 200 / 255, atol=1e-6)      # exactly the box
    np.testing.assert_allclose(t.points(np.array([[30.0, 10.0], [40, 20]]), box).numpy(), [[0, 0], [10, 10]])
    assert FrameTransform(20, "center").box(40, 60) == (10, 0, 50, 40)
    pad = t.frames(frames, t.box(40, 60, [-20, 10, 0, 30]))                               # outside: black padding
    assert float(pad.max()) == 0.0
    # downscaling is antialiased (area): a 1-px checkerboard becomes flat grey, not aliased stripes
    cb = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[None, ..., None].repeat(3, -1)
    small = FrameTransform(16, "none").frames(cb, (0, 0, 64, 64))
    assert float((small - 0.5).abs().max()) < 0.01


@pytest.mark.parametrize("size, res, n", [(64, 48, 5), (64, 32, 60), (48, 64, 60)])
def test_frame_transform_resizes_many_frames_like_one_at_a_time(size, res, n):
    """Frames are stacked along channels for one cv2 call; OpenCV 5 caps that (128 channels, 4 for INTER_AREA at a
    non-integer ratio such as 64 → 48: a larger stack raises), and the chunks must give the per-frame resize."""
    import cv2

    frames = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    t = FrameTransform(res, "none", as_uint8=True)
    out = t.frames(frames, (0, 0, size, size)).numpy()
    interp = cv2.INTER_AREA if size > res else cv2.INTER_LINEAR
    ref = np.stack([cv2.resize(f, (res, res), interpolation=interp) for f in frames])
    assert np.abs(out.astype(int) - ref).max() <= 1      # ±1 LSB: OpenCV's 3-channel SIMD path rounds differently
    m = t.masks(frames[..., 0] > 128, (0, 0, size, size)).numpy()
    assert m.shape == (n, res, res, 1)


def test_both_decoders_deliver_the_same_stream(dm):
    other = "pyav" if dm.cfg.decoder == "decord" else "decord"
    a, b = dm.train_dataset(), make_datamodule(dm.cfg.root, DATA, decoder=other).train_dataset()
    x, y = a[5], b[5]
    assert x["meta"]["frame_indices"].tolist() == y["meta"]["frame_indices"].tolist()
    assert float((x["driving"] - y["driving"]).abs().max()) <= 2 / 255 + 1e-6
