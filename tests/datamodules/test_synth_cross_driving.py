"""SynthFaces cross-identity driving (``data.use_synth_cross_driving``, for X-Portrait's
``driving_appearance=cross_identity``): training samples carry ``driving_cross`` = I(id', m_t), the driving frames'
motion performed by another *training* identity."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from datamodules.synthfaces import face_geometry, load_meta
from helpers import make_datamodule
from media import write_video


# decoder=pyav: decord cannot decode the 32² clips written below, and the scan decodes with data.decoder
DATA = dict(layout="fomm", resolution=48, num_frames=3, batch_size=4, num_workers=0, steps_per_epoch=2,
            use_scan_cache=False, use_synth_cross_driving=True, decoder="pyav")


@pytest.fixture(scope="module")
def cross_batch(synth_root):
    dm = make_datamodule(synth_root, DATA)
    return dm, next(iter(dm.train_dataloader()))


def fit_pose(canonical: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Least-squares (A, c) of ``pixels = canonical @ A.T + c`` (K×3 → K×2), returned as a 4×2 matrix [A.T; c]."""
    X = np.concatenate([canonical, np.ones((len(canonical), 1))], 1)
    P, *_ = np.linalg.lstsq(X, pixels.astype(np.float64), rcond=None)
    assert np.abs(X @ P - pixels).max() < 0.02, "keypoints are not an affine image of the identity's geometry"
    return P


def test_batch_has_driving_cross_of_another_training_identity(cross_batch):
    dm, b = cross_batch
    B, T = 4, 3
    assert b["driving_cross"].shape == b["driving"].shape == (B, T, 3, 48, 48)
    assert b["driving_cross"].dtype == torch.float32 and 0 <= b["driving_cross"].min() and b["driving_cross"].max() <= 1
    assert b["keypoints_cross"].shape == b["keypoints"].shape == (B, T, 29, 2)
    train_ids = {r.identity for r in dm.splits["train"]}
    held_out = {r.identity for s in ("val", "test") for r in dm.splits[s]}
    assert held_out and not train_ids & held_out
    for own, other in zip(b["identity"], b["identity_cross"]):
        assert other in train_ids and other not in held_out and other != own
    # another face, background, hair …: a large appearance difference on every sample
    diff = (b["driving_cross"] - b["driving"]).abs().flatten(1).mean(1)
    assert (diff > 0.05).all(), diff


def test_driving_cross_shows_the_driving_motion(cross_batch, synth_root):
    """Keypoints are identity-dependent (face shape, eye spacing …), so they are not equal; what the renderer shares is
    the motion m_t: the pose (A_t, c_t) fitted from each frame's keypoints on its own identity's canonical geometry
    (at that frame's expression) is the same for ``driving`` and ``driving_cross``."""
    dm, b = cross_batch
    diffs = []
    for i in range(b["driving"].shape[0]):
        meta = load_meta(synth_root / "meta" / f"{b['meta']['clip_id'][i].split('/')[-1]}.npz")
        other = next(r for r in dm.splits["train"] if r.identity == b["identity_cross"][i])
        idp_other = load_meta(other.meta)["identity_params"]
        motion = meta["motion"]
        for k, t in enumerate(b["meta"]["frame_indices"][i].tolist()):
            expr = {n: v[t] for n, v in motion["expression"].items()}
            P_drv = fit_pose(face_geometry(meta["identity_params"], expr)["keypoints"], b["keypoints"][i, k].numpy())
            P_cross = fit_pose(face_geometry(idp_other, expr)["keypoints"], b["keypoints_cross"][i, k].numpy())
            np.testing.assert_allclose(P_cross, P_drv, atol=2e-3)
            diffs.append(np.abs(b["keypoints_cross"][i, k].numpy() - b["keypoints"][i, k].numpy()).max())
    assert max(diffs) > 0.5, "the identities' geometry differs, so their keypoints do"


def test_self_render_reproduces_the_stored_clip_and_the_stream_is_deterministic(synth_root):
    """Rendering the clip's *own* identity from its stored motion gives the decoded mp4 back (up to H.264): the meta's
    motion is what was rendered. Sample i is a pure function of (seed, i), and the option leaves the rest unchanged."""
    dm = make_datamodule(synth_root, DATA, resolution=64, num_frames=2)
    ds = dm.train_dataset()
    rec = ds.records[0]
    frames, _ = ds.cross.render(rec, [0, 5, 11], rec.identity)
    decoded = ds.readers.get(rec).get_frames([0, 5, 11])
    err = np.abs(frames.astype(np.float32) - decoded.astype(np.float32)).mean() / 255
    assert err < 0.015, err
    a, b = ds[3], ds[3]
    assert a["identity_cross"] == b["identity_cross"] and torch.equal(a["driving_cross"], b["driving_cross"])
    plain = make_datamodule(synth_root, DATA, resolution=64, num_frames=2,
                            use_synth_cross_driving=False).train_dataset()[3]
    assert "driving_cross" not in plain and torch.equal(plain["driving"], a["driving"])
    partners = {ds[i]["identity_cross"] for i in range(6)}
    assert len(partners) > 1, "partners vary with the sample index"


def test_non_synthfaces_data_names_the_key(tmp_path):
    for k in range(4):
        write_video(tmp_path / "train" / f"id{k}#vid#0#8.mp4", num_frames=8, size=(32, 32), seed=k)
    with pytest.raises(ValueError, match=r"driving_cross.*not a SynthFaces dataset") as err:
        make_datamodule(tmp_path, DATA, resolution=32, val_fraction=0.0, test_fraction=0.25).train_dataset()
    assert "use_synth_cross_driving" in str(err.value)
    make_datamodule(tmp_path, DATA, resolution=32, val_fraction=0.0, test_fraction=0.25,
            use_synth_cross_driving=False).train_dataset()  # off: the same data loads
