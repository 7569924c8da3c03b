"""The model contract every portraitlab method follows (see docs/DESIGN.md).

* ``animate(source, driving, *, generator=None, **kw) -> frames``: source B×3×H×W, driving B×T×3×H×W, output
  B×T×3×H×W, all float in [0, 1]. Evaluation reaches a model only through this method, always with the WHOLE clip
  in one call: a diffusion method samples it in one trajectory (its own window schedule), drawing every random
  number (noise, window offsets, posterior samples) from ``generator`` (None: a generator seeded from the model's
  ``sample_seed``); frame-wise methods (MRFA, baselines) may chunk internally for memory. Callers pass only the
  keywords a model's ``animate`` takes (:func:`animate_kwargs`).
* ``compute_losses(batch) -> {"loss_<name>": tensor}``: unweighted terms. ``lambda_<name>`` in the model config
  weighs each; a weight of 0 must skip the computation (ask ``self.use_loss(name)`` before computing a term).
* Validation and test steps are shared: they call ``animate`` and log L1 plus a video grid
  (source | driving | generated | target).
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning as L
import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from lit_models.common.visual import log_video_grid
from lit_models.optim import AdamConfig, instantiate_partial, upgrade_flat_optim_keys


@dataclass
class ModelConfig:
    """Fields every method's schema inherits."""

    _target_: str = MISSING
    name: str = MISSING
    resolution: int = 64
    # `_partial_` nodes (lit_models.optim): the optimizer class and its keywords; the lr schedule or null
    optimizer: AdamConfig = field(default_factory=AdamConfig)
    scheduler: Optional[Any] = None
    # validation grids: how many videos and frames are logged per validation run
    num_log_videos: int = 2
    num_log_frames: int = 8


class AnimationModule(L.LightningModule):
    """Base LightningModule: owns the config, the loss weighting and the shared eval steps."""

    def __init__(self, cfg: Any):
        super().__init__()
        cfg = upgrade_flat_optim_keys(cfg)   # configs saved with the flat lr / betas / … keys
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.structured(cfg) if not isinstance(cfg, dict) else OmegaConf.create(cfg)
        self.cfg = cfg
        self.save_hyperparameters({"model": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)})  # plain types
        self._logged_grids = 0

    # ---- contract -------------------------------------------------------------------------------------------
    def animate(self, source: torch.Tensor, driving: torch.Tensor, *, generator: Optional[torch.Generator] = None,
                **kw) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    # ---- loss weighting (threestudio style) -----------------------------------------------------------------
    def weight(self, name: str) -> float:
        key = f"lambda_{name}"
        if key not in self.cfg:
            raise KeyError(f"model config has no `{key}` for loss term `loss_{name}`")
        return float(self.cfg[key])

    def use_loss(self, name: str) -> bool:
        return self.weight(name) > 0

    def weighted_total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for key, value in terms.items():
            if not key.startswith("loss_"):
                raise KeyError(f"loss terms are named loss_<name>, got {key!r}")
            w = self.weight(key[len("loss_"):])
            if w == 0:
                continue
            total = w * value if total is None else total + w * value
        if total is None:
            raise RuntimeError("every loss weight is 0: nothing to optimise")
        return total

    # ---- steps ----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.compute_losses(batch)
        loss = self.weighted_total(terms)
        bs = batch["source"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._logged_grids = 0

    def _eval_step(self, batch: dict, stage: str) -> None:
        source, driving = batch["source"], batch["driving"]
        target = batch.get("target", driving)
        # the whole clip in one call, one generator seeded once (the same sample at every validation)
        gen = torch.Generator().manual_seed(int(getattr(self.cfg, "sample_seed", 0) or 0))
        pred = self.animate(source, driving, **animate_kwargs(self, generator=gen))
        if pred.shape != target.shape:
            raise RuntimeError(f"{type(self).__name__}.animate returned {tuple(pred.shape)}, expected {tuple(target.shape)}")
        # one definition of `l1` (eval.runner): val/test clips are self-reenactment, frame 0 is the source: not scored
        t0 = 1 if pred.shape[1] > 1 else 0
        l1 = (pred[:, t0:] - target[:, t0:]).abs().mean()
        self.log(f"{stage}/l1", l1, prog_bar=stage == "val", batch_size=source.shape[0], sync_dist=True)
        if self._logged_grids < self.cfg.num_log_videos and self.trainer is not None and self.global_rank == 0:
            n = min(source.shape[0], self.cfg.num_log_videos - self._logged_grids)
            log_video_grid(self.trainer, f"{stage}/grid", source[:n], driving[:n], pred[:n], target[:n],
                           step=self.global_step, max_frames=self.cfg.num_log_frames)
            self._logged_grids += n

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        """``model.optimizer`` instantiated over the trainable parameters; with ``model.scheduler`` (unless
        :meth:`scheduler_is_constant`), that schedule over the optimizer, stepped per optimizer step."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        opt = instantiate_partial(self.cfg.optimizer)(params)
        node = self.cfg.get("scheduler")
        if node is None or self.scheduler_is_constant(node):
            return opt
        sched = instantiate_partial(node)(optimizer=opt, **self.scheduler_kwargs(node))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def scheduler_is_constant(self, node: Any) -> bool:
        """True when ``model.scheduler`` keeps the lr constant (then no scheduler is built)."""
        return False

    def scheduler_kwargs(self, node: Any) -> dict:
        """Arguments of the scheduler factory that only the module knows (beyond ``optimizer``)."""
        return {}


# ---- calling ``animate``: keywords, device, precision -------------------------------------------------------------
def animate_kwargs(model: Any, **candidates) -> dict:
    """The keywords of ``candidates`` that ``model.animate`` takes (a None value is left out): callers offer
    ``generator=``, ``keypoints=``, ``relative=`` … to every model and each gets only what its contract names."""
    params = inspect.signature(model.animate).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in candidates.items() if v is not None and (k in params or (takes_any and k == "generator"))}


def resolve_device(spec: Any = "auto") -> torch.device:
    """``device=auto|cpu|cuda|cuda:N`` → a torch.device (auto: CUDA when present, else CPU). A CUDA device that this
    machine does not have fails at once, in one line naming CUDA."""
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={spec}: CUDA is not available on this machine (torch {torch.__version__}, "
                               f"cuda build {torch.version.cuda}); use device=cpu or device=auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device={spec}: CUDA has {torch.cuda.device_count()} device(s) here")
        return dev
    raise ValueError(f"device must be auto | cpu | cuda | cuda:N, got {spec!r}")


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(spec: Any, device: torch.device, model: Any = None) -> str:
    """``sampling.precision=auto|fp16|bf16|fp32`` → the name used. auto: the model's official sampling precision
    on CUDA (``official_precision``, X-Portrait's fp16 autocast) and fp32 elsewhere / for models without one.
    fp16 needs CUDA (CPU half kernels are incomplete); bf16 runs on both."""
    spec = "auto" if spec is None else str(spec).strip().lower()
    device = torch.device(device)
    if spec == "auto":
        official = str(getattr(model, "official_precision", "fp32"))
        return official if device.type == "cuda" else "fp32"
    if spec not in PRECISIONS:
        raise ValueError(f"sampling.precision must be auto | fp16 | bf16 | fp32, got {spec!r}")
    if spec == "fp16" and device.type != "cuda":
        raise ValueError("sampling.precision=fp16 needs CUDA (device=cuda); on the CPU use bf16 or fp32")
    return spec


def precision_context(precision: str, device: torch.device):
    """Autocast for fp16 / bf16 (the official X-Portrait runs its sampling and decode under
    ``torch.cuda.amp.autocast(dtype=float16)``: weights stay fp32, matmuls and convolutions run in the low
    precision); fp32: no autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=PRECISIONS[precision])


def model_dtype(model: Any) -> str:
    """The dtype of the model's parameters (``float32`` …; ``none`` for a parameter-free model)."""
    try:
        return str(next(model.parameters()).dtype).removeprefix("torch.")
    except (StopIteration, AttributeError):
        return "none"
