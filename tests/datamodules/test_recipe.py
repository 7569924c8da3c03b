"""The official FOMM / MRFA training recipe: augmentation equal to the official AllAugmentationTransform on the same
draw (golden), identity sampling with repeats, the sorted frame pair, and the derived steps per epoch."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import augment
from datamodules.config import AugmentationConfig

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "vox"
OFFICIAL = AugmentationConfig(horizontal_flip=True, time_flip=True, brightness=0.1, contrast=0.1, saturation=0.1,
                              hue=0.1)   # MRFA config/vox1.yaml augmentation_params


def _sha(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _chunk_frames(real_fixtures: Path, chunk_key: str, wanted: set) -> dict:
    """Frames ``wanted`` (positions in the chunk) of a chunk of tests/golden/vox, made by ``prepare vox``'s
    functions from the real clip (the golden test of test_prepare_vox.py checks them against the official script)."""
    from datamodules.prepare.vox import crop_resize, in_chunk, iter_rgb_frames, read_metadata, scaled_bbox

    files = {"pexelsHand01": "hand_over_face_pexels.mp4", "pyfeatFace1": "single_face.mp4"}
    for job in read_metadata(GOLDEN / "vox-metadata-handmade.csv"):
        for c in job.chunks:
            if f"{job.partition}/{c.name(job.person_id)}" != chunk_key:
                continue
            fps, frames = iter_rgb_frames(real_fixtures / "clips" / files[job.video_id])
            out, k = {}, 0
            for i, frame in enumerate(frames):
                if in_chunk(i, c, job.ref_fps, fps):
                    if k in wanted:
                        box = scaled_bbox(c.bbox, job.ref_width, job.ref_height, frame.shape[:2])
                        out[k] = crop_resize(frame, box, (256, 256))
                    k += 1
                if len(out) == len(wanted):
                    frames.close()
                    break
            return out
    raise KeyError(chunk_key)


@pytest.mark.fixtures
def test_augmentation_equals_the_official_transform_on_the_same_draw(real_fixtures):
    """tests/golden/vox/augment_official.json: the official transform after random.seed(s) on real frame pairs
    (NOTES.md; per-frame sha256 of its uint8 output). Our draw from the same Python random state, applied to the
    same uint8 frames, gives the same frames; as floats (our u8 · (1/255) in float32 against the official
    img_as_float) they differ by < 1 ulp."""
    import json

    g = json.loads((GOLDEN / "augment_official.json").read_text())
    branches = set()
    wanted = {c: {k for smp in g["samples"] if smp["chunk"] == c for k in smp["frames"]} for c in range(len(g["chunks"]))}
    got = {c: _chunk_frames(real_fixtures, g["chunks"][c], w) for c, w in wanted.items()}
    for smp in g["samples"]:
        frames = np.stack([got[smp["chunk"]][k][64:192, 64:192] for k in smp["frames"]])
        assert [_sha(f) for f in frames] == smp["input_sha256_16"]
        p = augment.draw(random.Random(int(smp["seed"])), OFFICIAL)
        branches.add("t" if p.time_flip else "h" if p.horizontal_flip else "n")
        ours = augment.apply_frames(frames, p)
        assert [_sha(f) for f in ours] == smp["official_sha256_16"], f"seed {smp['seed']}"
        ours_f = torch.from_numpy(ours).to(torch.float32).mul_(1.0 / 255.0)       # batch_to_float
        official_f = torch.from_numpy((ours.astype(np.float64) / 255).astype(np.float32))   # img_as_float
        assert float((ours_f - official_f).abs().max()) <= 6e-8
        # the jitter is not a no-op on these frames
        assert [_sha(f) for f in augment.apply_frames(frames, augment.AugmentParams())] != smp["official_sha256_16"]
    assert branches == {"t", "h", "n"}            # the golden covers time flip, mirror flip and neither


def test_numpy_draw_is_distributed_as_the_official_one():
    rng = np.random.default_rng(0)
    draws = [augment.draw(rng, OFFICIAL) for _ in range(4000)]
    t = np.mean([d.time_flip for d in draws])
    h = np.mean([d.horizontal_flip for d in draws])
    assert abs(t - 0.5) < 0.03 and abs(h - 0.25) < 0.03
    assert not any(d.time_flip and d.horizontal_flip for d in draws)
    for d in draws[:50]:
        assert sorted(d.order) == sorted(augment.JITTER_ORDER)
        assert all(0.9 <= d.factors[k] <= 1.1 for k in ("brightness", "contrast", "saturation"))
        assert -0.1 <= d.factors["hue"] <= 0.1
    assert len({d.order for d in draws}) == 24
    off = augment.draw(rng, AugmentationConfig())
    assert not off.time_flip and not off.horizontal_flip and off.order == ()


def _datamodule(root, **kw):
    from datamodules import VideoClipDataModule

    base = dict(root=str(root), layout="fomm", resolution=64, crop="none", num_frames=1, batch_size=4,
                num_workers=0, val_fraction=0.0, use_scan_cache=False, decoder="pyav", steps_per_epoch=12)
    base.update(kw)
    dm = VideoClipDataModule(**base)
    dm.setup()
    return dm


def test_id_sampling_visits_every_identity_num_repeats_times_per_epoch(synth_root):
    dm = _datamodule(synth_root, id_sampling=True, num_repeats=3, pair_sampling="sorted_pair")
    ds = dm.train_dataset()
    ids = ds.identities
    assert len(ids) >= 2 and dm.splits["val"] == []          # no validation carve-out from the official splits
    L = len(ids) * 3
    for epoch in (0, 1):
        seen = Counter()
        for i in range(epoch * L, (epoch + 1) * L):
            c, s, d = ds.draw(i)
            rec = ds.records[c]
            seen[rec.identity] += 1
            assert s <= d[0] < ds._num_frames(rec)           # the official pair: sorted, with replacement
        assert seen == Counter({i: 3 for i in ids})
    order0 = [ds.records[ds.draw(i)[0]].identity for i in range(L)]
    order1 = [ds.records[ds.draw(i)[0]].identity for i in range(L, 2 * L)]
    assert order0 != order1                                  # a new random order each epoch
    clips = {ds.records[ds.draw(i)[0]].path for i in range(4 * L)}
    assert len(clips) > len(ids)                             # more than one clip per identity gets drawn
    # without id_sampling identities are drawn by clip, not balanced per epoch
    flat = _datamodule(synth_root).train_dataset()
    assert Counter(flat.records[flat.draw(i)[0]].identity for i in range(L)) != Counter({i: 3 for i in ids})


def test_augmented_sample_is_the_augmentation_of_the_plain_sample(synth_root):
    cfg = dict(id_sampling=True, num_repeats=2, pair_sampling="sorted_pair")
    plain = _datamodule(synth_root, **cfg).train_dataset(as_uint8=True)
    aug = _datamodule(synth_root, augmentation=OFFICIAL, **cfg).train_dataset(as_uint8=True)
    seen = set()
    for i in range(12):
        p = aug.augment_params(i)
        a, b = aug[i], plain[i]
        assert a["meta"]["clip_id"] == b["meta"]["clip_id"] and a["meta"]["source_index"] == b["meta"]["source_index"]
        frames = torch.cat([b["source"][None], b["driving"]]).numpy()        # [source, driving], uint8 N×H×W×3
        want = augment.apply_frames(frames, p)
        got = torch.cat([a["source"][None], a["driving"]]).numpy()
        assert np.array_equal(got, want)
        if "keypoints" in b:
            w = plain.transform.resolution
            kp_plain = torch.cat([b["source_keypoints"][None], b["keypoints"]]).numpy()
            kp_aug = torch.cat([a["source_keypoints"][None], a["keypoints"]]).numpy()
            assert np.allclose(kp_aug, augment.apply_points(kp_plain, p, w))
        seen.add("t" if p.time_flip else "h" if p.horizontal_flip else "n")
    assert {"t", "h"} <= seen


def _fake_fomm(root: Path, identities: int, clips_of_first: int = 1) -> Path:
    for i in range(identities):
        for k in range(clips_of_first if i == 0 else 1):
            d = root / "train" / f"id{10000 + i}#vid{k}#000000#000100.mp4"
            d.mkdir(parents=True)
            (d / "0000000.png").touch()      # discovery reads names only
    (root / "test" / "id99999#v#000000#000010.mp4").mkdir(parents=True)
    (root / "test" / "id99999#v#000000#000010.mp4" / "0000000.png").touch()
    return root


def test_recipe_arithmetic():
    from datamodules.recipe import batch_per_process, steps_per_epoch, world_size

    assert world_size(8) == 8 and world_size([0, 1], 2) == 4 and world_size("4") == 4
    with pytest.raises(ValueError, match="trainer.devices"):
        world_size("auto")
    assert batch_per_process(80, 8) == 10 and batch_per_process(80, 3) == 26
    # identities × 150 / (batch per process × processes) when it divides …
    for ids, world in ((424, 8), (424, 4), (424, 1), (100, 2)):
        b = batch_per_process(80, world)
        assert steps_per_epoch(ids, 150, b, world) == ids * 150 // (b * world)
    assert steps_per_epoch(424, 150, 10, 8) == 795
    # … and DistributedSampler's ceil, then drop_last, when it does not: ceil(7·150/3) = 350 → 350 // 26 = 13
    assert steps_per_epoch(7, 150, 26, 3) == 13


def test_vox_sweep_derives_steps_and_milestones_from_the_data(compose_cfg, tmp_path, capsys):
    root = _fake_fomm(tmp_path / "vox", identities=424, clips_of_first=3)
    cfg = compose_cfg("train", ["sweep=mrfa_refine_iters_vox", f"data.root={root}", "trainer.devices=8"])
    assert cfg.data.batch_size == 10                          # the official global batch 80 over 8 processes
    S = cfg.data.steps_per_epoch
    assert S == 424 * 150 // (10 * 8) == 795
    assert list(cfg.model.scheduler.milestones) == [60 * S, 90 * S] and cfg.trainer.max_steps == 100 * S
    assert cfg.trainer.val_check_interval == S and cfg.data.val_fraction == 0.0
    assert cfg.data.id_sampling and cfg.data.num_repeats == 150 and cfg.data.pair_sampling == "sorted_pair"
    assert dict(cfg.data.augmentation) == dict(horizontal_flip=True, time_flip=True, brightness=0.1, contrast=0.1,
                                               saturation=0.1, hue=0.1)
    out = capsys.readouterr().out
    assert "424 training identities (426 clips) × 150 repeats / (10 per process × 8 processes) = 795 steps" in out
    cfg4 = compose_cfg("train", ["sweep=mrfa_refine_iters_vox", f"data.root={root}", "trainer.devices=4"])
    assert (cfg4.data.batch_size, cfg4.data.steps_per_epoch) == (20, 795)
    real = compose_cfg("train", ["experiment=mrfa_real", f"data.root={root}"])
    assert real.eval_protocol.name == "mrfa_reconstruction" and real.data.batch_size == 80
    # composing without the data gives a placeholder (train() stops first, naming data.root); an existing root
    # without training clips fails naming it
    missing = compose_cfg("train", ["sweep=mrfa_refine_iters_vox", f"data.root={tmp_path / 'absent'}"])
    assert missing.data.steps_per_epoch == 1 and "steps per epoch unknown" in capsys.readouterr().out
    (tmp_path / "empty" / "test").mkdir(parents=True)
    empty = compose_cfg("train", ["sweep=mrfa_refine_iters_vox", f"data.root={tmp_path / 'empty'}"])
    with pytest.raises(Exception, match="no training clips"):
        _ = empty.data.steps_per_epoch
