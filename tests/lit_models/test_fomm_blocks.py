"""The FOMM blocks shared by MRFA's priors give the numbers pinned in tests/golden/fomm_blocks (both sampling
conventions: official ``align_corners=False`` for mtia / fomm, ``align_corners=True`` for tps), and state dicts
with positional block names still load."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lit_models.mrfa import MRFA

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "fomm_blocks" / "mrfa_priors.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def base_cfg():
    from experiments.compose import compose

    return compose("train", ["model=mrfa_tiny"]).model


def build(base_cfg, case):
    c = OmegaConf.merge(base_cfg, {"resolution": 32, "generator": {"num_up_blocks": 4}, "refine_iters": 2,
                                   "lambda_perceptual": 0.0}, case["overrides"])
    torch.manual_seed(0)
    return MRFA(c).eval()


@pytest.mark.parametrize("prior", ["mtia", "fomm", "tps"])
def test_priors_reproduce_the_pinned_outputs(golden, base_cfg, prior):
    case = golden[prior]
    m = build(base_cfg, case)
    sums = {k: v.double().sum().item() for k, v in m.state_dict().items() if v.is_floating_point()}
    assert list(sums.values()) == list(case["state_dict_sum"].values())      # same initial weights, same order
    src, drv = case["inputs"]["source"], case["inputs"]["driving"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            kp_s, kp_d = m.encoder(src), m.encoder(drv)
            bg = m.bg_predictor(src, drv) if m.bg_predictor is not None else None
            tr: dict = {}
            o = m.generate(src, kp_s, kp_d, bg, trace=tr)
        got = {"kp_source": kp_s["value"], "kp_source_jacobian": kp_s.get("jacobian"), "bg_param": bg, **o, **tr}
        m.train()
        torch.manual_seed(2)
        got.update(m.compute_losses({"source": src, "driving": drv[:, None]}))
    finally:
        torch.set_num_threads(n)
    for key, ref in case["outputs"].items():
        assert torch.equal(got[key].detach(), ref), f"{prior}: {key} differs by {(got[key] - ref).abs().max():.3g}"


@pytest.mark.parametrize("prior", ["fomm", "tps"])
def test_state_dicts_with_positional_block_names_load(golden, base_cfg, prior):
    case = golden[prior]
    m = build(base_cfg, case)
    sd = m.state_dict()
    old_keys = case["state_dict_keys"]
    assert len(old_keys) == len(sd) and set(old_keys) != set(sd)              # the layout really differs
    fresh = build(base_cfg, {"overrides": {**case["overrides"]}})
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(dict(zip(old_keys, [v.clone() for v in sd.values()])), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values()))


def test_the_two_grid_conventions_differ_and_dense_motion_follows_align_corners():
    from lit_models.common.dense_motion import DenseMotionNetwork
    from lit_models.common.warp import make_coordinate_grid

    fomm, lin = make_coordinate_grid(16, 16, fomm_arithmetic=True), make_coordinate_grid(16, 16)
    assert not torch.equal(fomm, lin) and torch.allclose(fomm, lin, atol=2e-7)
    torch.manual_seed(0)
    kwargs = dict(num_kp=2, block_expansion=4, num_blocks=2, max_features=16, scale_factor=0.5)
    official, common = DenseMotionNetwork(**kwargs), DenseMotionNetwork(**kwargs, align_corners=True)
    assert hasattr(official, "down") and not hasattr(common, "down")     # Gaussian+nearest vs torch antialias
    common.load_state_dict(official.state_dict(), strict=False)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g)
    kp = {"value": torch.rand(1, 2, 2, generator=g) * 2 - 1, "jacobian": torch.eye(2).expand(1, 2, 2, 2)}
    a, b = official.eval()(x, kp, kp), common.eval()(x, kp, kp)
    assert (a["sparse_deformed"] - b["sparse_deformed"]).abs().max() > 1e-3
