"""Model variants build on their method's full config and state only what they change."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.compose import CONFIG_DIR
from lit_models.registry import discover

MODEL_DIR = Path(CONFIG_DIR) / "model"
FULL = {p.stem for p in MODEL_DIR.glob("*.yaml")
        if [str(d) for d in OmegaConf.load(p).get("defaults", [])] == [f"{p.stem}_schema", "_self_"]}


def _parent(name: str) -> str:
    return [str(d) for d in OmegaConf.load(MODEL_DIR / f"{name}.yaml").defaults if str(d) != "_self_"][0]


@pytest.mark.parametrize("name", sorted(p.stem for p in MODEL_DIR.glob("*_tiny.yaml")))
def test_tiny_variant_inherits_its_full_variant(name):
    method = name[: -len("_tiny")]
    assert method in FULL, f"model/{method}.yaml should be the full variant on {method}_schema"
    assert _parent(name) == method, f"model/{name}.yaml should list `{method}` in its defaults"


def _repeats(raw, parent, path=""):
    for key in raw:
        if key == "defaults" or key not in parent:
            continue
        node, pnode = raw._get_node(key), parent._get_node(key)
        if node._is_interpolation() or pnode._is_interpolation():
            if str(node._value()) == str(pnode._value()):
                yield path + key
        elif OmegaConf.is_dict(raw[key]) and OmegaConf.is_dict(parent[key]):
            yield from _repeats(raw[key], parent[key], f"{path}{key}.")
        elif OmegaConf.to_container(raw, resolve=False)[key] == OmegaConf.to_container(parent, resolve=False)[key]:
            yield path + key


@pytest.mark.parametrize("name", sorted(p.stem for p in MODEL_DIR.glob("*.yaml")))
def test_model_yaml_states_only_what_differs_from_its_parent(compose_cfg, name):
    parent_name = _parent(name)
    if parent_name.endswith("_schema"):
        parent = OmegaConf.structured(discover()[parent_name[: -len("_schema")]])
    else:
        parent = compose_cfg("train", [f"model={parent_name}"]).model
    repeated = list(_repeats(OmegaConf.load(MODEL_DIR / f"{name}.yaml"), parent))
    assert not repeated, f"model/{name}.yaml repeats {parent_name}'s values: {repeated}"
