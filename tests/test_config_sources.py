"""Enum-typed choice fields fail at compose time, naming the key and the allowed values, and still read as strings."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError


@pytest.mark.parametrize("override, key, allowed", [
    ("data.layout=fom", "layout", ["auto", "fomm", "nested", "frames", "shards"]),
    ("data.crop=square", "crop", ["none", "center", "meta"]),
    ("data.decoder=ffmpeg", "decoder", ["pyav", "decord"]),
    ("ckpt_weights=best", "ckpt_weights", ["auto", "ema", "raw"]),
])
def test_bad_choice_fails_at_compose_naming_key_and_choices(compose_cfg, override, key, allowed):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg("train", ["model=direct", override])
    text = str(err.value) + str(err.value.__cause__)
    assert key in text and all(a in text for a in allowed), text


def test_choice_fields_read_and_serialise_as_plain_strings(compose_cfg):
    from datamodules.datamodule import to_data_config

    cfg = compose_cfg("train", ["model=direct", "data.layout=fomm", "data.decoder=pyav", "ckpt_weights=raw"])
    assert cfg.data.layout == "fomm" and f"{cfg.data.decoder}" == "pyav" and str(cfg.ckpt_weights) == "raw"
    assert cfg.ckpt_weights in ("auto", "ema", "raw")
    # run fingerprints and config.yaml are written through to_yaml: the value, not the enum's repr
    text = OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True)))
    assert "layout: fomm" in text and "decoder: pyav" in text and "Layout" not in text
    dc = to_data_config(cfg.data)
    assert dc.layout == "fomm" and dc.crop == "center"


@pytest.mark.parametrize("override, key", [
    ("model.motion_injection=cross", "motion_injection"),
    ("model.motion_encoder=resnet", "motion_encoder"),
    ("model.init_latents=zeros", "init_latents"),
])
def test_xnemo_choice_fails_at_compose(compose_cfg, override, key):
    from lit_models.xnemo.config import INIT_LATENTS, MOTION_ENCODERS, MOTION_INJECTIONS

    allowed = {"motion_injection": MOTION_INJECTIONS, "motion_encoder": MOTION_ENCODERS, "init_latents": INIT_LATENTS}
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg("train", ["model=xnemo_tiny", override])
    text = str(err.value) + str(err.value.__cause__)
    assert key in text and all(a in text for a in allowed[key]), text


def test_enum_fields_are_saved_as_plain_strings_in_hparams(compose_cfg):
    from lit_models.registry import build_model

    cfg = compose_cfg("train", ["model=xnemo_tiny", "model.motion_injection=text_xattn"])
    model = build_model(cfg.model)
    saved = model.hparams["model"]
    assert type(saved["motion_injection"]) is str and saved["motion_injection"] == "text_xattn"
    assert model.cfg.motion_injection == "text_xattn"


@pytest.mark.parametrize("overrides, key, allowed", [
    (["model=xportrait_tiny", "model.local_patch_mode=boxes"], "local_patch_mode", ["official", "box"]),
    (["model=xportrait_tiny", "model.driving_appearance=swap"], "driving_appearance",
     ["augment", "cross_identity", "none"]),
    (["model=xportrait_tiny", "model.window_schedule=sliding"], "window_schedule", ["blend", "circular", "uniform"]),
    (["model=xnemo_tiny", "model.timestep_spacing=sideways"], "timestep_spacing",
     ["leading", "trailing", "linspace", "ldm_uniform"]),
    (["model=xnemo_tiny", "model.temporal.norm_stats=per_batch"], "norm_stats", ["per_clip", "per_frame"]),
    (["model=interanimate_tiny", "model.ortho_target=keys"], "ortho_target", ["quantized", "raw"]),
    (["model=imposter_tiny", "model.finetune=adapters"], "finetune", ["full", "lora", "full_lora"]),
    (["model=mrfa_tiny", "model.prior=dlib"], "prior", ["mtia", "fomm", "tps"]),
    (["model=mrfa_tiny", "model.kp.tps_backbone=vit"], "tps_backbone", ["resnet18", "conv"]),
    (["model=direct", "eval_protocol.mode=pairs"], "mode", ["self", "cross", "synth_cross"]),
    (["model=direct", "eval_protocol.resize=lanczos"], "resize",
     ["bilinear_antialias", "bilinear", "bicubic_antialias", "bicubic", "area", "nearest"]),
    (["model=direct", "eval_protocol.pred_uint8=ceil"], "pred_uint8", ["round", "floor"]),
    # an extra protocol is typed by the same schema
    (["sweep=mrfa_refine_iters", "extra_eval.synthfaces_cross.mode=crossed"], "mode", ["self", "cross", "synth_cross"]),
])
def test_method_and_protocol_choices_fail_at_compose(compose_cfg, overrides, key, allowed):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg("train", overrides)
    text = str(err.value) + str(err.value.__cause__)
    assert key in text and all(a in text for a in allowed), text


def test_choice_checks_of_the_public_functions_name_the_key_and_the_choices():
    import torch

    from eval.resize import RESIZE_METHODS, resize_frames
    from eval.protocol import Resize
    from lit_models.diffusion.sampling import step_windows
    from lit_models.mrfa.raft import refine_scales

    assert set(RESIZE_METHODS) == set(Resize)
    with pytest.raises(ValueError, match=r"^eval_protocol\.resize='lanczos' is not one of bilinear_antialias, "
                                         r"bilinear, bicubic_antialias, bicubic, area, nearest$"):
        resize_frames(torch.zeros(1, 3, 8, 8), 4, "lanczos")
    assert resize_frames(torch.zeros(1, 3, 8, 8), 4, "area").shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"^window_schedule='sliding' is not one of blend, circular, uniform$"):
        step_windows("sliding", 8, 4, 1)
    with pytest.raises(ValueError, match=r"^model\.refine_schedule='coarse' is not one of official, spread$"):
        refine_scales(2, 6, "coarse")


def test_a_model_built_from_plain_hparams_checks_its_choices(compose_cfg):
    """A checkpoint's hyper-parameters are plain strings (no schema): the model still names a bad value."""
    from lit_models.registry import build_model

    cfg = compose_cfg("train", ["model=imposter_tiny"])
    plain = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    plain["finetune"] = "adapters"
    with pytest.raises(ValueError, match=r"model\.finetune='adapters' is not one of full, lora, full_lora"):
        build_model(plain)


def test_checkpoint_hparams_are_plain_and_load_with_weights_only(compose_cfg, tmp_path):
    """Saved hyper-parameters hold strings, not enum members: the checkpoint loads with ``weights_only=True``
    (``lit_models.registry.load_model``) and the rebuilt model reads the same choices."""
    import torch

    from lit_models.registry import build_model, load_model

    cfg = compose_cfg("train", ["model=mrfa_tiny", "model.refine_schedule=spread", "model.norm=group"])
    model = build_model(cfg.model)
    saved = model.hparams["model"]
    assert type(saved["refine_schedule"]) is str and type(saved["norm"]) is str and type(saved["prior"]) is str
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    torch.load(path, weights_only=True)
    again = load_model(str(path))
    assert again.cfg.refine_schedule == "spread" and again.cfg.norm == "group"
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_enum_choices_survive_pickling(compose_cfg):
    """DDP spawn and DataLoader workers pickle configs: every enum member comes back as itself."""
    import pickle

    from eval.protocol import Mode, Resize
    from lit_models.diffusion.config import WindowSchedule
    from lit_models.mrfa.config import Prior
    from lit_models.xportrait.config import LocalPatchMode

    for member in (Mode.self, Resize.area, WindowSchedule.circular, Prior.tps, LocalPatchMode.box):
        assert pickle.loads(pickle.dumps(member)) is member
    cfg = compose_cfg("train", ["model=xportrait_tiny"])
    back = pickle.loads(pickle.dumps(cfg))
    assert back.model.local_patch_mode == "official" and back.eval_protocol.mode == "self"
    assert back.model.window_schedule is WindowSchedule.circular
