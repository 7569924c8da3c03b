"""model.optimizer / model.scheduler (_partial_ nodes, lit_models.optim): per-method defaults, swapping the
optimizer from the command line, validation of the nodes' keys, and configs saved with the flat keys."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from lit_models.optim import upgrade_flat_optim_keys, upgrade_run_config

MRFA = ["model=mrfa_tiny", "model.mtia.depth=1"]


def _opt(cfg_model, max_steps=None):
    from lit_models.registry import build_model

    m = build_model(cfg_model)
    if max_steps is not None:
        m._trainer = type("T", (), {"max_steps": max_steps})()
    conf = m.configure_optimizers()
    return m, conf


@pytest.mark.parametrize("model,want", [
    ("mrfa", dict(lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0, fused=True)),
    ("xnemo_tiny", dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, fused=None)),
    ("xportrait", dict(lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0, fused=None)),
    ("interanimate", dict(lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0, fused=None)),
    ("imposter", dict(lr=2e-6, betas=(0.9, 0.999), weight_decay=0.0, fused=None)),
    ("imposter_tiny", dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, fused=None)),
])
def test_default_optimizer_per_method(compose_cfg, model, want):
    """The composed node of each method is Adam with that method's values; MRFA and the diffusion models build no
    scheduler by default (no milestones; constant without warmup)."""
    cfg = compose_cfg("train", [f"model={model}"]).model
    node = OmegaConf.to_container(cfg.optimizer)
    assert node.pop("_target_") == "torch.optim.Adam" and node.pop("_partial_") is True
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in node.items()} == \
        {k: v for k, v in want.items() if k != "fused" or v is not None}
    sched = cfg.get("scheduler")
    if model == "mrfa":
        assert list(sched.milestones) == [] and sched.gamma == 0.1
    elif model.startswith("imposter"):
        assert sched is None
    else:
        assert sched.name == "constant" and sched.num_warmup_steps == 0


def test_mrfa_optimizer_and_milestones(compose_cfg):
    m, opt = _opt(compose_cfg("train", MRFA).model)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is True
    assert tuple(opt.defaults["betas"]) == (0.5, 0.999) and opt.defaults["lr"] == 2e-4
    m, conf = _opt(compose_cfg("train", [*MRFA, "model.scheduler.milestones=[1,2]", "model.scheduler.gamma=0.5"]).model)
    sched = conf["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.MultiStepLR) and conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(3):
        lrs.append(conf["optimizer"].param_groups[0]["lr"])
        conf["optimizer"].step()
        sched.step()
    assert lrs == pytest.approx([2e-4, 1e-4, 5e-5])


def test_diffusion_scheduler_needs_max_steps(compose_cfg):
    cfg = compose_cfg("train", ["model=xnemo_tiny", "model.resolution=32", "model.unet.sample_size=8",
                                "model.motion_encoder_resolution=16", "model.motion_encoder_channels=[8,16]",
                                "model.motion_dim=32", "model.scheduler.name=cosine"]).model
    with pytest.raises(ValueError, match="model.scheduler.name=cosine decays over trainer.max_steps"):
        _opt(cfg)
    m, conf = _opt(cfg, max_steps=10)
    assert type(conf["lr_scheduler"]["scheduler"]).__name__ == "LambdaLR"


def test_swapped_optimizer_changes_the_update(compose_cfg):
    """model.optimizer._target_=torch.optim.AdamW (+amsgrad, weight decay) from the command line builds AdamW, and
    one step moves the weights differently from Adam's."""
    from experiments.validation import validate

    base = compose_cfg("train", [*MRFA, "model.optimizer.weight_decay=0.5"])
    swapped = compose_cfg("train", [*MRFA, "model.optimizer.weight_decay=0.5", "model.optimizer._target_=torch.optim.AdamW",
                                    "+model.optimizer.amsgrad=true"])
    validate(swapped)
    after = []
    for cfg in (base, swapped):
        torch.manual_seed(0)
        m, opt = _opt(cfg.model)
        p = next(q for q in m.parameters() if q.requires_grad)
        p.grad = torch.ones_like(p)
        before = p.detach().clone()
        opt.step()
        after.append(p.detach() - before)
    assert type(opt).__name__ == "AdamW" and opt.defaults["amsgrad"] is True
    assert not torch.allclose(after[0], after[1])


@pytest.mark.parametrize("overrides,message", [
    (["model.optimizer._target_=torch.optim.AdamW", "+model.optimizer.amsgrd=true"],
     r"model.optimizer.amsgrd is not an argument of torch.optim.AdamW \(did you mean model.optimizer.amsgrad\?\)"),
    (["model.optimizer._target_=torch.optim.Adamm"], r"model.optimizer._target_='torch.optim.Adamm' cannot be imported"),
    (["model.optimizer._target_=torch.optim.SGD"], r"model.optimizer.betas is not an argument of torch.optim.SGD"),
    (["+model.scheduler.gama=0.5"], r"model.scheduler.gama is not an argument of .*MultiStepLR \(did you mean model.scheduler.gamma\?\)"),
    (["+model.lr=1e-3"], r"model.lr is not a config key \(did you mean model.optimizer.lr\?\)"),
])
def test_validation_names_the_bad_key(compose_cfg, overrides, message):
    from experiments.validation import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg("train", [*MRFA, *overrides]))


def test_sgd_with_adam_keys_left_out(compose_cfg):
    from experiments.validation import validate

    cfg = compose_cfg("train", [*MRFA, "model.optimizer._target_=torch.optim.SGD", "model.optimizer.betas=null",
                                "model.optimizer.fused=null", "+model.optimizer.momentum=0.9"])
    validate(cfg)
    _, opt = _opt(cfg.model)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


def test_checkpoint_with_flat_keys_loads_with_the_same_optimizer(compose_cfg, tmp_path):
    """A checkpoint whose hparams hold the flat keys (lr, betas, weight_decay, fused_adam, lr_milestones, lr_gamma)
    loads through load_model and builds the same optimizer and schedule as the current config."""
    from lit_models.registry import build_model, load_model

    cfg = compose_cfg("train", [*MRFA, "model.optimizer.lr=3e-4", "model.optimizer.weight_decay=0.01",
                                "model.scheduler.milestones=[5]", "model.scheduler.gamma=0.3"]).model
    new = build_model(cfg)
    flat = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    opt_node, sched_node = flat.pop("optimizer"), flat.pop("scheduler")
    flat.update(lr=opt_node["lr"], betas=opt_node["betas"], weight_decay=opt_node["weight_decay"], fused_adam=True,
                lr_milestones=sched_node["milestones"], lr_gamma=sched_node["gamma"])
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"model": flat}, "state_dict": new.state_dict()}, path)
    old = load_model(str(path))
    assert "lr" not in old.hparams["model"] and old.hparams["model"]["optimizer"]["lr"] == 3e-4
    (o1, s1), (o2, s2) = [(c["optimizer"], c["lr_scheduler"]["scheduler"]) for c in
                          (new.configure_optimizers(), old.configure_optimizers())]
    assert type(o1) is type(o2) and o1.defaults == o2.defaults
    assert (s1.milestones, s1.gamma) == (s2.milestones, s2.gamma) == ({5: 1}, 0.3)


def test_flat_diffusion_keys_and_run_config():
    up = upgrade_flat_optim_keys({"_target_": "x", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.0,
                                  "lr_scheduler": "cosine", "lr_warmup_steps": 3})
    assert up["optimizer"] == {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3, "betas": [0.9, 0.99],
                               "weight_decay": 0.0}
    assert up["scheduler"] == {"_target_": "diffusers.optimization.get_scheduler", "_partial_": True,
                               "name": "cosine", "num_warmup_steps": 3}
    assert upgrade_flat_optim_keys({"fused_adam": False, "lr": 1.0})["optimizer"]["fused"] is None
    run = upgrade_run_config({"axes": ["model.lr", "seed"], "model": {"lr": 2e-3, "name": "d"}})
    assert run["axes"] == ["model.optimizer.lr", "seed"] and run["model"]["optimizer"]["lr"] == 2e-3
    same = {"model": {"optimizer": {"lr": 1}}}
    assert upgrade_run_config(same) is same


def test_a_run_finished_with_the_flat_keys_is_recognised(compose_cfg, tmp_path):
    """A train_done.json whose fingerprint is of the config written with the flat lr / betas / fused_adam /
    lr_milestones / lr_gamma keys (the layout before the nodes, spelled out here) counts as the same finished run."""
    import hashlib

    from experiments.rundir import DONE_FILE, finished_run

    cfg = compose_cfg("train", [*MRFA, "resume=true", "model.scheduler.milestones=[3]"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in ("resume", "run_dir"):
        plain.pop(key, None)
    if not plain.get("callbacks", True):
        plain.pop("callbacks")
    model = plain["model"]
    opt, sched = model.pop("optimizer"), model.pop("scheduler")
    model.update(lr=opt["lr"], betas=opt["betas"], weight_decay=opt["weight_decay"], fused_adam=True,
                 lr_milestones=[3], lr_gamma=sched["gamma"])
    old_sha = hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(plain), sort_keys=True).encode()).hexdigest()
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    (tmp_path / DONE_FILE).write_text(json.dumps({"config_sha256": old_sha, "ckpt": str(ckpt), "results": {"l1": 0.5}}))
    assert finished_run(cfg, tmp_path) == {"l1": 0.5}
    cfg.model.scheduler.gamma = 0.5                      # another schedule: work to do
    assert finished_run(cfg, tmp_path) is None
