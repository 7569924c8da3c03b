"""MRFA = the official network: the reduced official checkpoint imports and reproduces every official golden tensor,
the full model has the official key set and 114,339,206 parameters, K < 6 is the official fewer-steps variant,
and the importer refuses anything it cannot load exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lit_models.mrfa import MRFA
from lit_models.mrfa.import_official import build_from_official, import_official, infer_sizes, normalise_state_dict
from lit_models.mrfa.raft import refine_scales

FIX = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "official" / "mrfa"
REDUCED_SD, REDUCED_IO, REDUCED_YAML, FULL_KEYS = (FIX / "reduced_state_dict.pt", FIX / "reduced_io.pt",
                                                   FIX / "reduced_config.yaml", FIX / "full_vox_keys.json")
needs_fixtures = pytest.mark.skipif(not REDUCED_SD.is_file(), reason=f"official MRFA fixtures absent ({FIX})")
FLOW_ATOL, MAP_ATOL = 1e-4, 2e-5       # pixels on flows; images, maps, features


def official_name(key: str) -> str:
    return key.split("(")[0]


@pytest.fixture(scope="module")
def reduced():
    model, report = build_from_official(REDUCED_SD, REDUCED_YAML)
    io = torch.load(REDUCED_IO, map_location="cpu", weights_only=True)
    return model, report, io


def run_trace(model, io, refine_iters=None):
    S, D = io["inputs"]["source"], io["inputs"]["driving"]
    n = torch.get_num_threads()
    torch.set_num_threads(2)               # the fixtures were made with 2 threads
    try:
        tr: dict = {}
        with torch.no_grad():
            kp_s, kp_d = model.encoder(S), model.encoder(D)
            out = model.generate(S, kp_s, kp_d, trace=tr, refine_iters=refine_iters)
            tr.update({"kp_source.kp": kp_s["value"], "kp_source.jacobian": kp_s["jacobian"],
                       "kp_driving.kp": kp_d["value"], "kp_driving.jacobian": kp_d["jacobian"],
                       "img_down": model.down(S), "prediction": out["prediction"],
                       "dense_motion.occlusion": tr["dense_motion.occlusion_logit"]})
    finally:
        torch.set_num_threads(n)
    return tr, out


@needs_fixtures
def test_reduced_checkpoint_reproduces_every_official_tensor(reduced):
    model, _, io = reduced
    tr, _ = run_trace(model, io)
    diffs = {}
    for key, ref in io["outputs"].items():
        ours = tr[official_name(key)]
        assert ours.numel() == ref.numel(), key
        diffs[key] = (ours.reshape(ref.shape) - ref).abs().max().item()
    assert len(diffs) == 61
    for key, d in diffs.items():
        tol = FLOW_ATOL if ("flow" in key and "d_flow" not in key) else MAP_ATOL
        assert d <= tol, f"{key}: max abs diff {d:.3g} > {tol}"


@needs_fixtures
def test_reduced_yaml_config_is_the_imported_model(reduced):
    """model=mrfa_reduced (our config) builds exactly the network the importer inferred for the official YAML."""
    from experiments.compose import compose

    model, report, _ = reduced
    ours = MRFA(compose("train", ["model=mrfa_reduced"]).model)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert ours.cfg.mtia.heads == model.cfg.mtia.heads == 4


@needs_fixtures
def test_importer_writes_a_loadable_checkpoint_with_sha256(tmp_path, reduced):
    import hashlib

    from lit_models.registry import load_model

    model, _, io = reduced
    out = tmp_path / "reduced.ckpt"
    r = import_official(REDUCED_SD, out, config=REDUCED_YAML)
    assert r["sha256"] == hashlib.sha256(REDUCED_SD.read_bytes()).hexdigest()
    assert r["ddp_prefix"] and r["cast_to_float32"] == 601 and len(r["dropped_loss_only"]) == 4
    ck = torch.load(out, map_location="cpu", weights_only=False)
    assert ck["official_import"]["sha256"] == r["sha256"]
    loaded = load_model(str(out))
    S, D = io["inputs"]["source"], io["inputs"]["driving"]
    with torch.no_grad():
        a = loaded.animate(S, D[:, None])[:, 0]
    assert (a - io["outputs"]["prediction"]).abs().max() < 1e-4


@needs_fixtures
def test_importer_handles_float32_without_prefix_and_names_every_unmatched_key(tmp_path):
    raw = torch.load(REDUCED_SD, map_location="cpu", weights_only=True)["model"]
    plain = {k[len("module."):]: v.float() for k, v in raw.items()}          # DataParallel-free, float32
    torch.save(plain, tmp_path / "plain.pth")
    model, report = build_from_official(tmp_path / "plain.pth", heads=4)
    assert not report["ddp_prefix"] and report["cast_to_float32"] == 0
    assert model.cfg.refine_iters == 6 and model.cfg.resolution == 64
    # both directions named: a key the model lacks and a key the checkpoint lacks
    broken = dict(plain)
    broken["decoder.extra.weight"] = torch.zeros(1)
    del broken["decoder.refine.conv2.bias"]
    torch.save({"model": broken, "epoch": 3}, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as e:
        build_from_official(tmp_path / "broken.pth", heads=4)
    assert "decoder.extra.weight" in str(e.value) and "decoder.refine.conv2.bias" in str(e.value)
    # a shape mismatch is named too
    bad = dict(plain)
    bad["decoder.refine.conv2.bias"] = torch.zeros(3)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="decoder.refine.conv2.bias"):
        build_from_official(tmp_path / "bad.pth", heads=4)
    # mixed prefixes are refused
    with pytest.raises(ValueError, match="module."):
        normalise_state_dict({"module.a": torch.zeros(1), "b": torch.zeros(1)})


@needs_fixtures
def test_importer_cli_prints_the_summary(tmp_path, capsys):
    from lit_models.mrfa.import_official import main

    assert main([str(REDUCED_SD), "--out", str(tmp_path / "x.ckpt"), "--config", str(REDUCED_YAML)]) == 0
    text = capsys.readouterr().out
    assert "sha256:" in text and "699 loaded (strict)" in text and "K = 6" in text
    assert main([str(tmp_path / "missing.pth"), "--out", str(tmp_path / "y.ckpt")]) == 1


@pytest.mark.skipif(not FULL_KEYS.is_file(), reason=f"official MRFA fixtures absent ({FIX})")
def test_full_model_has_the_official_vox_keys_and_parameter_count():
    from experiments.compose import compose

    ref = json.loads(FULL_KEYS.read_text())["model"]
    ref = {k[len("module."):]: tuple(v) for k, v in ref.items()}
    ref = {k: v for k, v in ref.items() if not k.startswith(("vgg.", "pyramid."))}   # loss-only, dropped on import
    with torch.device("meta"):
        model = MRFA(compose("train", ["model=mrfa"]).model)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert {k: v for k, v in ours.items() if v != ref[k]} == {}
    assert sum(p.numel() for p in model.parameters()) == 114_339_206
    # and the importer infers the official sizes back from those shapes
    sizes = infer_sizes({k: torch.empty(v, device="meta") for k, v in ref.items()})
    assert sizes["resolution"] == 256 and sizes["refine_iters"] == 6 and sizes["mtia"]["depth"] == 12


def test_refine_scales_official_and_spread():
    assert refine_scales(6, 6) == [0, 1, 2, 3, 4, 5]
    assert refine_scales(4, 6) == [0, 1, 2, 3]                 # official: the K coarsest scales
    assert refine_scales(0, 6) == []
    assert refine_scales(2, 6, "spread") == [0, 5]
    assert refine_scales(3, 6, "spread") == [0, 2, 5]
    with pytest.raises(ValueError, match="refine_iters"):
        refine_scales(7, 6)
    with pytest.raises(ValueError, match="refine_schedule"):
        refine_scales(2, 6, "coarse")


@needs_fixtures
@pytest.mark.parametrize("K", [4, 2])
def test_fewer_steps_is_the_official_variant(reduced, K):
    """K < 6: the official ``num_iter = K`` network (K to_context convs; the full checkpoint minus the other
    to_context keys loads strictly), identical to K = 6 on the first K scales; the finer scales up-sample the
    *input* flow of scale K-1 (×2 per scale) and the refined occlusion logit, without refinement."""
    full, _, io = reduced
    cfg = OmegaConf.merge(full.cfg, {"refine_iters": K})
    model = MRFA(cfg).eval()
    sd = {k: v for k, v in full.state_dict().items()
          if not (k.startswith("decoder.to_context.") and int(k.split(".")[2]) >= K)}
    model.load_state_dict(sd, strict=True)
    assert len(model.decoder.to_context) == K
    tr6, _ = run_trace(full, io)
    trK, outK = run_trace(model, io)
    for i in range(K):
        for name in ("flow_in", "d_flow", "flow_refined", "occlusion_prob"):
            assert torch.equal(trK[f"iter{i}.{name}"], tr6[f"iter{i}.{name}"]), (i, name)
    up = lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)  # noqa: E731
    flow = trK[f"iter{K - 1}.flow_in"]
    for i in range(K, 6):
        flow = up(flow) * 2
        assert torch.allclose(trK[f"iter{i}.flow_in"], flow, atol=1e-5)
        assert f"iter{i}.d_flow" not in trK
    assert (trK["prediction"] - tr6["prediction"]).abs().max() > 1e-4
    # the same network at inference with K' = K on the full model gives the same result
    _, out_override = run_trace(full, io, refine_iters=K)
    assert torch.allclose(out_override["prediction"], outK["prediction"], atol=1e-6)


@needs_fixtures
def test_k0_is_the_official_prior_only_model(reduced):
    full, _, io = reduced
    model = MRFA(OmegaConf.merge(full.cfg, {"refine_iters": 0})).eval()
    keys = set(model.state_dict())
    assert not any(k.startswith(("decoder.kp", "decoder.corr_enc", "decoder.refine", "decoder.to_context",
                                 "decoder.pos_embedding")) for k in keys)
    model.load_state_dict({k: v for k, v in full.state_dict().items() if k in keys}, strict=True)
    tr, out = run_trace(model, io)
    # official prior_only: every scale warps by the prior flow (align_corners=False) with σ(prior occlusion)
    S = io["inputs"]["source"]
    dm = {"deformation": tr["dense_motion.deformation"], "occ": tr["dense_motion.occlusion_logit"]}
    g = model.decoder.generator
    with torch.no_grad():
        feats = g.encode(S)
        flow = dm["deformation"].permute(0, 3, 1, 2)
        warped, occs = [], []
        for f in feats:
            fr = F.interpolate(flow, size=f.shape[2:], mode="bilinear", align_corners=True)
            oc = F.interpolate(dm["occ"], size=f.shape[2:], mode="bilinear", align_corners=True)
            warped.append(F.grid_sample(f, fr.permute(0, 2, 3, 1), align_corners=False))
            occs.append(torch.sigmoid(oc))
        img = F.grid_sample(S, fr.permute(0, 2, 3, 1), align_corners=False)
        ref = g.decode(warped, img, occs)
    assert torch.allclose(out["prediction"], ref, atol=1e-6)
    # and it is the same as running the full model with refine_iters=0
    _, out0 = run_trace(full, io, refine_iters=0)
    assert torch.allclose(out0["prediction"], out["prediction"], atol=1e-6)


def test_spread_schedule_builds_and_runs():
    from experiments.compose import compose

    cfg = compose("train", ["model=mrfa_tiny", "model.refine_iters=2", "model.refine_schedule=spread"]).model
    torch.manual_seed(0)
    m = MRFA(cfg).eval()
    assert m.decoder.refined == [0, 5] and len(m.decoder.to_context) == 6
    tr: dict = {}
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64)
        m.generate(x, m.encoder(x), m.encoder(x.flip(-1)), trace=tr)
    assert "iter0.d_flow" in tr and "iter5.d_flow" in tr and "iter3.d_flow" not in tr
