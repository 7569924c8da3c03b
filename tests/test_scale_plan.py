"""`python -m experiments.plan`: per-rank memory from a meta-device build (no weights, no memory)."""
from __future__ import annotations

import pytest
import torch


def tiny(*extra: str) -> list[str]:
    return ["model=xnemo_tiny", "model.resolution=32", "data.resolution=32", "model.unet.sample_size=8",
            "data.num_frames=2", "run_dir=/nonexistent", *extra]


def test_plan_counts_the_real_models_parameters_and_shards_them(compose_cfg):
    from experiments.plan import plan
    from lit_models.registry import build_model

    cfg = compose_cfg("train", tiny("data.batch_size=2"))
    real = build_model(cfg.model)
    n = sum(p.numel() for p in real.parameters())
    n_train = sum(p.numel() for p in real.parameters() if p.requires_grad)
    single = plan(cfg)
    assert (single.params, single.trainable) == (n, n_train)
    assert single.param_bytes == 4 * n and single.grad_bytes == 4 * n_train and single.optim_bytes == 8 * n_train

    sharded = plan(compose_cfg("train", tiny("data.batch_size=2", "trainer=fsdp", "trainer.devices=4")))
    assert sharded.param_bytes == pytest.approx(4 * n / 4)            # fp32 master weights, 1/4 per rank
    assert sharded.optim_bytes == pytest.approx(8 * n_train / 4)
    assert 0 < sharded.gathered_bytes < 2 * n                           # bf16 root unit + largest block
    grad_op = plan(compose_cfg("train", tiny("data.batch_size=2", "trainer=fsdp", "trainer.devices=4",
                                             "trainer.fsdp_sharding_strategy=SHARD_GRAD_OP")))
    assert grad_op.param_bytes == 4 * n and grad_op.grad_bytes == pytest.approx(4 * n_train / 4)


def test_plan_activations_match_a_real_forward_and_scale_with_the_batch(compose_cfg):
    """The meta trace's saved-for-backward bytes equal those of a real CPU forward (attention counted as the fused
    kernel keeps it, parameters saved by ops not counted), and double with the batch."""
    from experiments.plan import activation_bytes, meta_batch
    from lit_models.registry import build_model

    cfg = compose_cfg("train", tiny("data.batch_size=1", "model.drop_reference_prob=0", "model.drop_motion_prob=0"))
    model = build_model(cfg.model)
    real = [0]
    params = {id(p) for p in model.parameters()}

    def pack(t):
        if id(t) not in params and not (t._base is not None and id(t._base) in params):   # weights are not activations
            real[0] += t.numel() * t.element_size()
        return t

    batch = {k: (torch.rand_like(v, device="cpu") if torch.is_tensor(v) else v) for k, v in meta_batch(cfg).items()}
    batch["target"] = batch["driving"]
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.compute_losses(batch)
    with torch.device("meta"):
        meta_model = build_model(cfg.model)
    meta, note = activation_bytes(meta_model, cfg, 4)
    assert meta == real[0], (meta, real[0], note)
    cfg2 = compose_cfg("train", tiny("data.batch_size=2", "model.drop_reference_prob=0", "model.drop_motion_prob=0"))
    double, _ = activation_bytes(meta_model, cfg2, 4)
    assert 1.8 * meta < double < 2.2 * meta


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xportrait", "xnemo"])
def test_plan_full_size_configs(compose_cfg, name, capsys):
    """The full 512² configs on 8 GPUs with FSDP: two SD-1.5 U-Nets (859.5 M each) + temporal layers etc."""
    from experiments.plan import main

    result = main([f"model={name}", "trainer=fsdp", "trainer.devices=8", "data.batch_size=1", "data.num_frames=16",
                   "data.resolution=512"])
    out = capsys.readouterr().out
    print(out)
    assert result.params > 2 * 859.5e6 and result.activation_bytes and result.activation_bytes > 1024**3
    assert "activations" in out and result.total > result.param_bytes
