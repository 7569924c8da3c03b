"""Every experiment, sweep, model, data and protocol config composes; typos fail naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from experiments.runtime import ConfigError, validate

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


ROOT_OVERRIDE = ["data.root=/tmp/portraitlab-nonexistent"]


@pytest.mark.parametrize("name", names("experiment"))
def test_experiment_composes_and_validates(compose_cfg, name):
    cfg = compose_cfg("train", [f"experiment={name}"])
    if OmegaConf.is_missing(cfg.data, "root"):
        cfg = compose_cfg("train", [f"experiment={name}", *ROOT_OVERRIDE])
    validate(cfg)
    assert cfg.model._target_ and cfg.model.name
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("name", names("sweep"))
def test_sweep_is_one_multirun_grid_over_declared_axes(compose_cfg, name):
    cfg = compose_cfg("train", [f"sweep={name}"], return_hydra_config=True)
    from hydra.types import RunMode

    assert cfg.hydra.mode == RunMode.MULTIRUN
    params = dict(cfg.hydra.sweeper.params)
    assert params, "a sweep declares its grid in hydra.sweeper.params"
    assert cfg.sweep_name == name
    for axis in cfg.axes:
        # an axis is a swept key, or a value inside a swept group (axis model.name for `model: a,b`)
        key = axis if axis in params else axis.split(".")[0]
        assert key in params, f"axis {axis} is not swept"
        # each grid point composes and validates
        first = str(params[key]).split(",")[0].strip()
        point = compose_cfg("train", [f"sweep={name}", f"{key}={first}"])
        validate(point)
    assert "SweepTableCallback" in cfg.hydra.callbacks.table._target_


@pytest.mark.parametrize("group", ["model", "data", "trainer", "logger", "eval_protocol"])
def test_every_group_option_composes(compose_cfg, group):
    for name in names(group):
        overrides = [f"{group}={name}"]
        cfg = compose_cfg("train", overrides)
        if group == "data" and OmegaConf.is_missing(cfg.data, "root"):
            cfg = compose_cfg("train", overrides + ROOT_OVERRIDE)
        assert cfg[group] is not None


@pytest.mark.parametrize("override, key", [
    ("model.lamda_l1=3", "lamda_l1"),
    ("data.resolutoin=64", "resolutoin"),
    ("trainer.max_step=3", "max_step"),
    ("data.synth.num_identites=3", "num_identites"),
])
def test_typo_fails_at_compose_time_naming_the_key(compose_cfg, override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as err:
        compose_cfg("train", ["model=direct", override])
    assert key in str(err.value) + str(err.value.__cause__)


def test_wrong_type_fails_naming_the_key(compose_cfg):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg("train", ["data.batch_size=eight"])
    assert "batch_size" in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override, key", [
    ("trainer.precision=fp8", "trainer.precision"),
    ("model.lambda_l1=-1", "model.lambda_l1"),
    ("data.resolution=128", "model.resolution"),
])
def test_semantic_validation_names_the_offending_key(compose_cfg, override, key):
    cfg = compose_cfg("train", ["model=direct", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_a_variant_is_a_small_override():
    """lightning-hydra-template style: every experiment file overrides a few keys, not a full config."""
    for path in (CONFIGS / "experiment").glob("*.yaml"):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert len(lines) <= 40, f"{path.name} is {len(lines)} lines: move shared values into a group option"


def test_mrfa_sweep_scores_keypoints_and_cross_identity_ground_truth(compose_cfg):
    """The MRFA sweep's table columns: AKD on ground-truth keypoints (akd_synthlm) under self-reenactment, and the error
    against SynthFaces' cross-identity ground truth (an extra synth_cross protocol) for every K."""
    cfg = compose_cfg("train", ["sweep=mrfa_refine_iters", "model.refine_iters=2"])
    validate(cfg)
    assert cfg.eval_protocol.mode == "self" and "akd_synthlm" in cfg.eval_protocol.metrics
    cross = cfg.extra_eval.synthfaces_cross
    assert cross.mode == "synth_cross" and {"l1", "psnr", "ssim", "akd_synthlm"} <= set(cross.metrics)


def test_cross_identity_driving_needs_the_data_option(compose_cfg):
    from experiments.runtime import ConfigError

    validate(compose_cfg("train", ["experiment=xportrait_cross_identity"]))
    bad = compose_cfg("train", ["experiment=xportrait_cross_identity", "data.use_synth_cross_driving=false"])
    with pytest.raises(ConfigError, match="data.use_synth_cross_driving"):
        validate(bad)
