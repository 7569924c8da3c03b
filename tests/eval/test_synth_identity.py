"""The learned SynthFaces identity embedding (eval.synth_identity) and the ``synthid`` face backend.

Fast: a tiny config trains in seconds — caching by config hash, determinism, held-out statistics stored and better
than the untrained net, same-identity renders closer than different identities; the leakage metric's sign on
constructed cases (output = driver → leakage > 0, output = source → < 0), NaN frames as the only "missing", the
suite's name resolution and facts. Slow: the default embedder (the one protocols use) separates unseen identities.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from eval import synth_identity as SI
from eval.metrics import FrameBatch
from helpers import assert_cache_hit_and_deterministic_training, packaged_default_config

TINY = SI.SynthIdentityConfig(resolution=32, num_train_identities=24, views_per_identity=3, num_val_identities=8,
                              embed_dim=16, width=8, steps=30, ids_per_batch=12, views_per_batch=2, lr=5e-3)
LEAK = ["id_to_source", "id_to_driver", "id_leakage", "id_leakage_missing"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_identity")
    return SI.SynthIdentityEmbedder(TINY, root=root, progress=False), root


def test_supcon_loss_and_verification_stats_reference_values():
    # two identities, two views each: aligned embeddings give a lower loss than swapped ones
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), dim=1)
    y = torch.tensor([0, 0, 1, 1])
    good, bad = SI.supcon_loss(z, y, 0.5), SI.supcon_loss(z, torch.tensor([0, 1, 0, 1]), 0.5)
    # reference: row 0's only positive is row 1; log-softmax over the 3 others
    sim = (z @ z.T / 0.5)
    ref0 = -(sim[0, 1] - torch.logsumexp(sim[0, 1:], 0))
    rows = [-(sim[i, j] - torch.logsumexp(sim[i, [k for k in range(4) if k != i]], 0))
            for i, j in ((0, 1), (1, 0), (2, 3), (3, 2))]
    assert torch.isclose(rows[0], ref0) and torch.isclose(good, torch.stack(rows).mean())
    assert good < bad
    st = SI.verification_stats(z, y)
    assert st["auc"] == pytest.approx(1.0) and st["accuracy"] == pytest.approx(1.0)
    assert st["cos_same"] > 0.9 > st["cos_diff"] and st["pairs_same"] == 2 and st["pairs_diff"] == 4


def test_tiny_embedder_trains_caches_is_deterministic_and_separates(tiny, monkeypatch):
    emb, root = tiny
    h = TINY.hash()
    assert sorted(p.name for p in root.iterdir()) == [f"{h}.json", f"{h}.pt"]
    info = json.loads((root / f"{h}.json").read_text())
    assert info["hash"] == h and info["config"]["steps"] == 30 and {"heldout", "heldout_degraded"} <= set(info)
    xv, yv = SI.render_identities(TINY.num_val_identities, TINY.views_per_identity, 32, TINY.hand_prob,
                                  TINY.motion_scale, TINY.use_random_scene, TINY.seed + 1_000_003)
    # the recorded held-out statistics are those of the cached net, and training beat the untrained net
    assert SI.verification_stats(emb(xv), yv)["auc"] == pytest.approx(info["heldout"]["auc"], abs=1e-6)
    torch.manual_seed(TINY.seed)
    untrained = SI.IdentityNet(TINY.embed_dim, TINY.width).eval()
    assert info["heldout"]["auc"] > SI.verification_stats(SI.embed(untrained, xv), yv)["auc"]
    # unseen identities in new scenes: same identity closer than different identities on average
    assert info["heldout"]["cos_same"] > info["heldout"]["cos_diff"] and info["heldout"]["auc"] > 0.6
    # second use loads the cache; a fresh training gives the same weights
    assert_cache_hit_and_deterministic_training(monkeypatch, SI, TINY,
                                                lambda: SI.SynthIdentityEmbedder(TINY, root=root, progress=False), emb,
                                                xv[:4])
    assert SI.SynthIdentityConfig(steps=30).hash() != SI.SynthIdentityConfig().hash()
    # frames of another size are resized to the trained resolution; embeddings are unit vectors
    big = torch.nn.functional.interpolate(xv[:2], size=(64, 64), mode="bilinear", align_corners=False)
    e = emb(big)
    assert e.shape == (2, 16) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)


def _renders(seed=3):
    """Source A (frame 0), driver B's clip, and A doing B's motion (the cross-identity ground truth), 32²."""
    from datamodules.synthfaces import render_clip, sample_identity, sample_motion

    rng = np.random.default_rng(seed)
    A, B = sample_identity(rng), sample_identity(rng)
    m = sample_motion(rng, 3)
    t = lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255   # noqa: E731
    return t(render_clip(A, m, 32)[0]), t(render_clip(B, m, 32)[0])


def test_leakage_sign_and_suite_resolution(tiny):
    from eval.suite import build_suite

    emb, _ = tiny
    A, B = _renders()
    proto = OmegaConf.create({"name": "t", "metrics": LEAK + ["id", "aed"], "id_backend": "synthid",
                              "resolution": 32})
    suite = build_suite(proto, identity_embedder=emb)
    names = [m.name for m in suite.frame_metrics]
    assert names == [f"{f}_synthid" for f in LEAK + ["id", "aed"]]
    assert suite.facts["synth_identity"]["valid_on"] == "SynthFaces protocols only"
    m = {mm.name: mm for mm in suite.frame_metrics}
    # output = the driver's frames → the output is the driver: leakage = 1 − cos(D, S) > 0
    fb = FrameBatch(B.clone(), A, A[0], driving=B)
    leak = m["id_leakage_synthid"].frames(fb)
    to_drv, to_src = m["id_to_driver_synthid"].frames(fb), m["id_to_source_synthid"].frames(fb)
    assert np.allclose(to_drv, 1.0, atol=1e-6) and (leak > 0).all() and np.allclose(leak, to_drv - to_src)
    # output = the source frame → leakage = cos(S, D) − 1 < 0, exactly minus the case above per frame
    fb2 = FrameBatch(A[:1].expand(3, -1, -1, -1), A, A[0], driving=B)
    leak2 = m["id_leakage_synthid"].frames(fb2)
    assert (leak2 < 0).all() and np.allclose(m["id_to_source_synthid"].frames(fb2), 1.0, atol=1e-6)
    # no detector: never missing, except for a NaN frame
    assert list(m["id_leakage_missing_synthid"].frames(fb)) == [0.0, 0.0, 0.0]
    bad = B.clone()
    bad[1, 0, 0, 0] = float("nan")
    fb3 = FrameBatch(bad, A, A[0], driving=B)
    assert list(m["id_leakage_missing_synthid"].frames(fb3)) == [0.0, 1.0, 0.0]
    assert np.isnan(m["id_leakage_synthid"].frames(fb3)[1]) and np.isnan(m["id_synthid"].frames(fb3)[1])
    # aed against the target (A doing B's motion): 0 when the output is the target
    assert np.allclose(m["aed_synthid"].frames(FrameBatch(A.clone(), A, A[0], driving=B)), 0.0, atol=1e-6)
    # explicit backend names resolve too; keypoint families are refused
    assert [mm.name for mm in build_suite(OmegaConf.create({"name": "t", "metrics": ["id_leakage_synthid"]}),
                                          identity_embedder=emb).frame_metrics] == ["id_leakage_synthid"]
    with pytest.raises(ValueError, match="identity backend"):
        build_suite(OmegaConf.create({"name": "t", "metrics": ["akd_synthid"]}), identity_embedder=emb)


def test_default_embedder_ships_pinned_and_separates_unseen_identities_on_soft_frames(tmp_path, monkeypatch):
    """The protocols' embedder (default config, 64²) is pinned: loaded from eval/assets with an empty user cache
    (never retrained on a new machine), its sha256 recorded; it separates identities it never saw."""
    packaged_default_config(SI, SI.SynthIdentityConfig, tmp_path, monkeypatch)
    emb = SI.SynthIdentityEmbedder(progress=False)
    assert emb.info["packaged"] is True and len(emb.info["weights_sha256"]) == 64
    assert emb.info["heldout"]["auc"] > 0.95 and emb.info["heldout_degraded"]["auc"] > 0.9
    # fresh identities (a seed it never saw), soft frames: the source's own renders beat other identities'
    x, y = SI.render_identities(30, 3, 64, 0.3, 1.0, True, seed=4242)
    st = SI.verification_stats(emb(SI.fixed_degrade(x)), y)
    assert st["auc"] > 0.9 and st["cos_same"] - st["cos_diff"] > 0.3
