"""`python -m experiments.plan [overrides ...]` — memory per GPU of a training config, before launching it.

    python -m experiments.plan model=xportrait trainer=fsdp trainer.devices=8
    python -m experiments.plan experiment=xnemo_synthfaces model=xnemo data.batch_size=1 trainer=ddp trainer.devices=4

The model is built on the ``meta`` device (no memory, no weights read: a config that names pretrained weights gets
their architecture — SD-1.5's U-Net from ``model.unet`` and SD-1.5's VAE shape — instead), so the full 512² configs
plan on a laptop. Per rank it counts

* parameters (fp32 master weights; 16-bit ``*-true`` precisions store them in 16 bit), gradients (trainable
  parameters) and optimizer states (Adam/AdamW: 2 fp32 tensors per trainable parameter, from the model's own
  ``configure_optimizers``), divided by the world size where FSDP shards them (FULL_SHARD: all three; SHARD_GRAD_OP:
  gradients and optimizer states), plus, under FSDP, the largest unit's gathered parameters;
* activations at the configured batch: one forward of the model's loss (``compute_losses``) on meta tensors of the
  batch shape (``data.batch_size`` × ``data.num_frames`` at ``data.resolution``), summing every tensor autograd saves
  for the backward pass (``torch.autograd.graph.saved_tensors_hooks``) — with the config's gradient checkpointing,
  and 16-bit sizes under a 16-bit precision (autocast halves matmul/conv outputs, so this is an upper bound there).
  Attention (``F.scaled_dot_product_attention``) is counted as a fused kernel keeps it (q, k, v, output, log-sum-exp;
  what flash / memory-efficient attention on a GPU and the CPU kernel save), not as the math path's L×S weights.

Not counted: the CUDA context (~0.5 GiB), the allocator's fragmentation, temporary buffers of a single op
(attention scores outside the saved set), and the data pipeline. Read the total as "needs at least".
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
from torch import nn

GiB = 1024**3
# SD-1.5's vae/config.json (the architecture only): used when a config's VAE weights are not on disk
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


@dataclass
class Plan:
    params: int
    trainable: int
    frozen: int
    world: int
    strategy: str
    sharding: str
    param_bytes: float
    grad_bytes: float
    optim_bytes: float
    gathered_bytes: float
    activation_bytes: float | None
    activation_note: str
    optimizer: str

    @property
    def total(self) -> float:
        return self.param_bytes + self.grad_bytes + self.optim_bytes + self.gathered_bytes + (self.activation_bytes or 0)

    def table(self, title: str) -> str:
        gb = lambda b: f"{b / GiB:8.2f} GiB"  # noqa: E731
        rows = [f"plan: {title}",
                f"  parameters       {self.params / 1e6:10.1f} M  ({self.trainable / 1e6:.1f} M trainable, "
                f"{self.frozen / 1e6:.1f} M frozen)",
                f"  strategy         {self.strategy}" + (f" ({self.sharding})" if self.strategy == "fsdp" else "")
                + f", {self.world} rank(s), optimizer {self.optimizer}",
                "  per rank:",
                f"    parameters     {gb(self.param_bytes)}",
                f"    gradients      {gb(self.grad_bytes)}",
                f"    optimizer      {gb(self.optim_bytes)}"]
        if self.strategy == "fsdp":
            rows.append(f"    FSDP gathered  {gb(self.gathered_bytes)}   (root unit + largest wrapped unit, unsharded)")
        act = gb(self.activation_bytes) if self.activation_bytes is not None else "   n/a    "
        rows += [f"    activations    {act}   ({self.activation_note})",
                 f"    total          {gb(self.total)}   (+ CUDA context ~0.5 GiB, allocator slack)"]
        return "\n".join(rows)


@contextlib.contextmanager
def _architecture_only(model_cfg):
    """Pretrained-weights loaders of the diffusion methods → the same architecture from config (meta device)."""
    try:
        from lit_models.diffusion import networks
    except ImportError:
        yield
        return
    original = networks._from_pretrained

    def from_config(cls, path, subfolder, local_files_only, what):
        name = cls.__name__
        if name == "UNet2DConditionModel":
            return cls.from_config(networks.unet_kwargs(model_cfg))
        if name == "AutoencoderKL":
            return cls(**SD15_VAE)
        if name == "AutoencoderKLTemporalDecoder":          # X-NeMo's VAE (SVD-xt's)
            return cls.from_config(networks.SVD_XT_VAE_CONFIG)
        return original(cls, path, subfolder, local_files_only, what)

    networks._from_pretrained = from_config
    try:   # X-NeMo's reference image encoder: CLIP ViT-L/14 weights → the same architecture (its stand-in)
        from lit_models.xnemo import model as xnemo_model
    except ImportError:
        xnemo_model = None
    original_encoder = getattr(xnemo_model, "build_image_encoder", None)
    if original_encoder is not None:
        xnemo_model.build_image_encoder = lambda kind, path, dim: original_encoder(
            "clip_standin" if kind == "clip" else kind, path, dim)
    try:
        yield
    finally:
        networks._from_pretrained = original
        if original_encoder is not None:
            xnemo_model.build_image_encoder = original_encoder


def build_meta_model(cfg) -> nn.Module:
    from lit_models.registry import build_model

    with _architecture_only(cfg.model), torch.device("meta"):
        model = build_model(cfg.model)
    return model


def _dtype_bytes(precision: str) -> tuple[int, int]:
    """(bytes per stored parameter, bytes per activation element) of a Lightning precision string."""
    p = str(precision)
    if p in ("16-true", "bf16-true"):
        return 2, 2
    if p in ("16-mixed", "bf16-mixed"):
        return 4, 2
    if p == "64-true":
        return 8, 8
    return 4, 4


def meta_batch(cfg, device="meta") -> dict:
    d = cfg.data
    B, T, R = int(d.batch_size), int(d.num_frames), int(d.resolution)
    driving = torch.empty(B, T, 3, R, R, device=device)
    return {"source": torch.empty(B, 3, R, R, device=device), "driving": driving, "target": driving,
            "identity": ["id"] * B, "meta": {}}


class _FusedAttention(torch.autograd.Function):
    """Shape-only stand-in of ``F.scaled_dot_product_attention`` for the meta trace: saves what a fused (flash /
    memory-efficient) kernel keeps for backward — q, k, v, the output and the per-row log-sum-exp — instead of the
    L×S attention weights the math path would save on meta."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(*q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def _fused_attention_on_meta():
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):
        if q.device.type != "meta":
            return original(q, k, v, *args, **kwargs)
        return _FusedAttention.apply(q, k, v)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def activation_bytes(model: nn.Module, cfg, act_bytes: int) -> tuple[float | None, str]:
    """Bytes autograd saves for backward in one training forward at the configured batch (meta tensors)."""
    fn = getattr(model, "compute_losses", None)
    if not callable(fn):
        return None, f"{type(model).__name__} has no compute_losses to trace"
    total = [0]
    params = {id(p) for p in model.parameters()}

    def pack(t: torch.Tensor):
        if id(t) in params or (t._base is not None and id(t._base) in params):
            return t   # a parameter (or a view of one) kept for backward: no memory beyond the weights
        if t.is_floating_point():
            total[0] += t.numel() * min(t.element_size(), act_bytes)
        else:
            total[0] += t.numel() * t.element_size()
        return t

    model.train()
    # a meta tensor has no values: data-dependent branches (`if mask.all()`) take the True branch, i.e. every
    # classifier-free-guidance condition kept, the path through every network (the largest activation set)
    original_bool = torch.Tensor.__bool__
    torch.Tensor.__bool__ = lambda t: True if t.device.type == "meta" else original_bool(t)
    try:
        with _fused_attention_on_meta(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(meta_batch(cfg))
    except Exception as err:   # an op without a meta kernel: report, never guess
        return None, f"not traced: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    finally:
        torch.Tensor.__bool__ = original_bool
    d = cfg.data
    return float(total[0]), (f"batch {d.batch_size} × {d.num_frames} frames at {d.resolution}², saved for backward"
                             + (", gradient checkpointing" if cfg.model.get("gradient_checkpointing") else ""))


def plan(cfg) -> Plan:
    tc = cfg.trainer
    model = build_meta_model(cfg)
    params = list(model.parameters())
    n_all = sum(p.numel() for p in params)
    n_train = sum(p.numel() for p in params if p.requires_grad)
    world = int(tc.devices if str(tc.devices) not in ("auto", "-1") else 1) * int(tc.num_nodes)
    if str(tc.devices) in ("auto", "-1"):
        world = 1
    p_bytes, a_bytes = _dtype_bytes(tc.precision)
    opt = model.configure_optimizers() if hasattr(model, "configure_optimizers") else None
    if isinstance(opt, (list, tuple)):
        opt = opt[0]
    if isinstance(opt, dict):
        opt = opt.get("optimizer")
    opt_name = type(opt).__name__ if opt is not None else "none"
    states = {"Adam": 2, "AdamW": 2, "SGD": 1, "RMSprop": 1, "Adagrad": 1}.get(opt_name, 2)
    strategy = str(tc.strategy)
    sharding = str(tc.get("fsdp_sharding_strategy", "FULL_SHARD"))
    shard_p = world if strategy == "fsdp" and sharding in ("FULL_SHARD", "HYBRID_SHARD") else 1
    shard_go = world if strategy == "fsdp" and sharding != "NO_SHARD" else 1
    param_b = n_all * p_bytes / shard_p
    grad_b = n_train * p_bytes / shard_go
    optim_b = n_train * 4 * states / shard_go
    gathered = 0.0
    if strategy == "fsdp" and shard_p > 1:
        from experiments.trainer import fsdp_class

        classes = tuple(fsdp_class(c) for c in tc.get("fsdp_wrap_modules") or [])
        units = [m for m in model.modules() if classes and isinstance(m, classes)]
        top = [m for m in units if not any(m is not u and any(m is s for s in u.modules()) for u in units)]
        wrapped = sum(p.numel() for m in top for p in m.parameters())
        largest = max((sum(p.numel() for p in m.parameters()) for m in top), default=0)
        compute_bytes = 2 if "16" in str(tc.precision) else p_bytes
        gathered = (n_all - wrapped + largest) * compute_bytes
    act, note = activation_bytes(model, cfg, a_bytes)
    return Plan(params=n_all, trainable=n_train, frozen=n_all - n_train, world=world, strategy=strategy,
                sharding=sharding, param_bytes=param_b, grad_bytes=grad_b, optim_bytes=optim_b, gathered_bytes=gathered,
                activation_bytes=act, activation_note=note, optimizer=opt_name)


def main(argv: list[str] | None = None) -> Plan:
    from experiments.compose import compose

    overrides = list(sys.argv[1:] if argv is None else argv)
    cfg = compose("train", overrides + ["run_dir=/nonexistent-plan-only"])
    result = plan(cfg)
    print(result.table(f"model={cfg.model.name} trainer.strategy={cfg.trainer.strategy} "
                       f"precision={cfg.trainer.precision} " + " ".join(overrides)))
    return result


if __name__ == "__main__":
    main()
