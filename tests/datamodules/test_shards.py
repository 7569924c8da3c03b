"""litdata shards: write generated clips (video files, a frame folder, meta npz, crop sidecar), read them back through
ShardClipSource and compare with decoding the local files directly."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from datamodules.layouts import discover
from datamodules.prepare.encode import encode_mp4
from datamodules.shards import INDEX_NAME, ShardClipSource, open_video_bytes, write_shards
from datamodules.video import open_video


def _frames(n, h, w, seed):
    rng = np.random.default_rng(seed)
    base = (rng.random((h, w, 3)) * 200).astype(np.uint8)
    return [np.clip(base.astype(int) + 6 * i, 0, 255).astype(np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """Nested root: 3 H.264 clips (with B-frames, 2 keyframes), meta for one, an un-applied crop box for another."""
    root = tmp_path_factory.mktemp("clips")
    lengths = [9, 12, 7]
    for i, n in enumerate(lengths):
        encode_mp4(_frames(n, 32, 48, i), root / f"id{i}" / "vidA" / f"clip{i}.mp4", fps=12.5, preset="ultrafast")
    (root / "meta").mkdir()
    kp = np.random.default_rng(3).random((12, 5, 2)).astype(np.float32)
    np.savez(root / "meta" / "clip1.npz", keypoints=kp)
    (root / "id2" / "vidA" / "clip2.crop.json").write_text(json.dumps({"box": [4, 2, 36, 34]}))
    # a `prepare crop` output: the box refers to another (source) video, the clip is already the crop
    (root / "id1" / "vidA" / "clip1.crop.json").write_text(json.dumps({"box": [0, 0, 9, 9], "source": "/x.mov"}))
    out = tmp_path_factory.mktemp("shards")
    index = write_shards(root, out, chunk_bytes="12KB", verbose=False)
    return root, out, index, kp, lengths


def test_shards_round_trip_equals_direct_decode(shard_set):
    root, out, index, kp, lengths = shard_set
    assert (out / "index.json").exists() and (out / INDEX_NAME).exists()
    assert len(list(out.glob("chunk-*.bin"))) >= 2  # random access across chunks
    src = ShardClipSource(out)
    local = {r.clip_id: r for r in discover(root)}
    assert sorted(r.clip_id for r in src.records) == sorted(local)
    assert index["num_clips"] == 3
    for rec in src.records:
        ref = local[rec.clip_id]
        assert (rec.identity, rec.video) == (ref.identity, ref.video)
        with open_video(ref.path) as direct, src.open(rec) as shard:
            assert rec.num_frames == shard.num_frames == direct.num_frames
            assert shard.fps == pytest.approx(direct.fps) and shard.size == direct.size == (32, 48)
            idx = [shard.num_frames - 1, 0, shard.num_frames // 2, 1, shard.num_frames - 1]  # random access
            np.testing.assert_array_equal(shard.get_frames(idx), direct.get_frames(idx))
            np.testing.assert_array_equal(np.stack(list(shard.iter_frames(1, None, 2))),
                                          np.stack(list(direct.iter_frames(1, None, 2))))
    assert sorted(r.num_frames for r in src.records) == sorted(lengths)


def test_shards_meta_crop_and_pickling(shard_set):
    root, out, index, kp, _ = shard_set
    src = pickle.loads(pickle.dumps(ShardClipSource(str(out))))  # as DataLoader workers receive it
    by_id = {r.clip_id: r for r in src.records}
    meta = src.load_meta(by_id["id1/vidA/clip1"])
    np.testing.assert_array_equal(meta["keypoints"], kp)
    assert src.load_meta(by_id["id0/vidA/clip0"]) is None
    assert src.load_crop(by_id["id2/vidA/clip2"]) == [4.0, 2.0, 36.0, 34.0]
    assert src.load_crop(by_id["id0/vidA/clip0"]) is None
    assert src.load_crop(by_id["id1/vidA/clip1"]) is None
    assert len({r.path for r in src.records}) == 3  # unique reader-cache keys


def test_frame_folders_are_stored_losslessly(tmp_path):
    import cv2

    folder = tmp_path / "root" / "idA" / "clipA"
    folder.mkdir(parents=True)
    frames = [(np.random.default_rng(i).random((16, 18, 3)) * 255).astype(np.uint8) for i in range(5)]
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    from datamodules.prepare.__main__ import main

    assert main(["shards", str(tmp_path / "root"), str(tmp_path / "out")]) == 0  # the CLI
    (rec,) = ShardClipSource(tmp_path / "out").records
    assert rec.clip_id == "idA/clipA" and rec.num_frames == 5
    with ShardClipSource(tmp_path / "out").open(rec) as r:
        np.testing.assert_array_equal(r.get_frames([4, 0, 2]), np.stack([frames[4], frames[0], frames[2]]))


def test_open_video_bytes_and_errors(tmp_path):
    path = tmp_path / "a.mp4"
    encode_mp4(_frames(6, 16, 16, 0), path, fps=10, preset="ultrafast")
    with open_video_bytes(path.read_bytes(), name="a") as r, open_video(path) as d:
        np.testing.assert_array_equal(r.get_frames([5, 2]), d.get_frames([5, 2]))
        with pytest.raises(IndexError):
            r.get_frames([6])
    with pytest.raises(FileNotFoundError, match="prepare shards"):
        ShardClipSource(tmp_path)


def test_datamodule_on_shards_gives_the_local_batches(synth_root, tmp_path):
    """layout=shards through VideoClipDataModule: the same splits and the same batch as the local SynthFaces root
    (frames, keypoints and hand/face masks from the meta npz)."""
    import torch

    from datamodules import VideoClipDataModule

    write_shards(synth_root, tmp_path / "shards", verbose=False)
    common = dict(resolution=32, batch_size=2, num_workers=0, num_frames=2, min_frames=4, crop="meta")
    dm_shards = VideoClipDataModule(root=str(tmp_path / "shards"), layout="shards", **common)
    dm_local = VideoClipDataModule(root=str(synth_root), **common)
    dm_shards.setup()
    dm_local.setup()
    assert dm_shards.summary["splits"] == dm_local.summary["splits"]
    a, b = next(iter(dm_shards.train_dataloader())), next(iter(dm_local.train_dataloader()))
    assert a["identity"] == b["identity"]
    for k in ("source", "driving", "target", "keypoints"):
        assert torch.equal(a[k], b[k]), k
    for k in b["masks"]:
        assert torch.equal(a["masks"][k], b["masks"][k]), k


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch, tmp_path):
    """A local S3 server (moto's server mode, a real HTTP endpoint on 127.0.0.1) and its credentials in the
    environment, exactly as a researcher's shell would hold them."""
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server]")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "portraitlab", "AWS_SECRET_ACCESS_KEY": "portraitlab-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "PORTRAITLAB_SHARD_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    import boto3

    boto3.client("s3").create_bucket(Bucket="portraits")
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_shards_stream_from_s3_with_credentials_from_the_environment(synth_root, tmp_path, s3_server):
    """`data=shards data.root=s3://bucket/prefix`: the datamodule reads the uploaded shards through a local S3
    server (HTTP on 127.0.0.1) and gives the same splits, batches and evaluation items as the local shards."""
    import boto3
    import torch

    from datamodules import VideoClipDataModule
    from datamodules.shards import upload_shards

    local = tmp_path / "shards"
    write_shards(synth_root, local, chunk_bytes="200KB", verbose=False)
    keys = upload_shards(local, "s3://portraits/synthfaces/v1")
    listed = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="portraits")["Contents"])
    assert listed == sorted(f"synthfaces/v1/{k}" for k in keys) and len(keys) >= 4   # several chunks + 2 indexes

    common = dict(layout="shards", resolution=32, batch_size=2, num_workers=0, num_frames=2, min_frames=4, crop="meta")
    dm_s3 = VideoClipDataModule(root="s3://portraits/synthfaces/v1", **common)
    dm_local = VideoClipDataModule(root=str(local), **common)
    dm_s3.setup()
    dm_local.setup()
    assert dm_s3.source.url == "s3://portraits/synthfaces/v1"
    assert dm_s3.summary["splits"] == dm_local.summary["splits"]
    loaders = zip(dm_s3.train_dataloader(), dm_local.train_dataloader())
    for _ in range(2):
        a, b = next(loaders)
        assert a["identity"] == b["identity"]
        for k in ("source", "driving", "target", "keypoints"):
            assert torch.equal(a[k], b[k]), k
    ea, eb = dm_s3.eval_dataset("test", "self", num_frames=4), dm_local.eval_dataset("test", "self", num_frames=4)
    assert len(ea) == len(eb) > 0
    for i in range(len(ea)):
        assert torch.equal(ea[i]["driving"], eb[i]["driving"])
    # the items came through litdata's S3 streaming (HTTP to the server above), not from the local folder
    assert dm_s3.source.dataset.input_dir.url == "s3://portraits/synthfaces/v1"
    # a prefix with nothing uploaded: a clear failure naming the object, not silently empty data
    with pytest.raises(Exception, match="404|Not Found|NoSuchKey"):
        VideoClipDataModule(root="s3://portraits/nothing-here", **common).setup()
