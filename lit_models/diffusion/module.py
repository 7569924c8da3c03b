"""``ReferenceVideoDiffusion``: the LightningModule every diffusion method subclasses.

``ε_θ(z_t, t | h_ref, c_motion)``: a video U-Net (spatial ``UNet2DConditionModel`` + AnimateDiff temporal layers)
denoises the target clip's latents ``z_t``; the appearance comes from a ReferenceNet run on the clean reference
latent ``z_ref`` (its self-attention tokens ``h_ref`` are read by the denoiser's self-attention, see
``reference_attention``); the motion condition ``c_motion`` is the subclass's: cross-attention tokens and/or
ControlNet residuals added to the U-Net's skip and middle features.

Subclasses implement two hooks (the rest — DDPM loss, guidance dropout, reference bank, windowed sampling — is here):

* ``encode_motion(source, driving, keep_motion, generator) -> state``: per-frame conditions, every value B×T×…,
  computed once per clip (``keep_motion`` B bool: False must remove the driving input's influence completely).
* ``condition_denoiser(rows, z_t, t) -> (encoder_hidden_states N×L×D, down_residuals | None, mid_residual | None)``:
  per denoiser call on N = B·T' rows (``rows``: the state sliced to the window and flattened).

Images enter in [0, 1] at any size; the networks run at ``cfg.resolution`` and ``animate`` returns the input size.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_models.base import AnimationModule
from lit_models.diffusion.config import InitialLatent, PredictionType, ReferenceLatent, ReferenceTimestep
from lit_models.diffusion.networks import (LatentCodec, build_reference_net, build_unet2d, build_video_unet,
                                           count_parameters)
from lit_models.diffusion.reference_attention import attach_reference_attention
from lit_models.optim import DIFFUSERS_TARGET
from lit_models.diffusion.sampling import (condition_keep_masks, guide, make_sampler, make_train_scheduler,
                                           sample_clip)
from toolbox.choices import as_choice

MotionState = dict[str, torch.Tensor]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize N×C×H×W to size×size (bilinear, antialiased when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < max(x.shape[-2:]))


def normalise_keypoints(keypoints: Optional[torch.Tensor], size) -> Optional[torch.Tensor]:
    """Pixel landmarks (pixel centres at integers) of H×W frames → [0, 1] coordinates: ``u = (x + 0.5) / W``."""
    if keypoints is None:
        return None
    H, W = int(size[0]), int(size[1])
    scale = torch.tensor([W, H], dtype=torch.float32, device=keypoints.device)
    return (keypoints[..., :2].float() + 0.5) / scale


class ReferenceVideoDiffusion(AnimationModule):
    def __init__(self, cfg):
        super().__init__(cfg)
        cfg = self.cfg
        if cfg.window_size > cfg.temporal.max_seq_length and cfg.temporal.use_temporal:
            raise ValueError(f"window_size={cfg.window_size} exceeds temporal.max_seq_length={cfg.temporal.max_seq_length}")
        self.codec = LatentCodec(cfg)
        unet2d = build_unet2d(cfg)
        if cfg.gradient_checkpointing:
            unet2d.enable_gradient_checkpointing()
        self.cross_attention_dim = int(unet2d.config.cross_attention_dim)
        self.latent_channels = int(unet2d.config.in_channels)
        if self.latent_channels != self.codec.channels or int(unet2d.config.out_channels) != self.codec.channels:
            raise ValueError(f"U-Net in/out channels ({self.latent_channels}, {unet2d.config.out_channels}) do not match "
                             f"the latent's {self.codec.channels} (latent={cfg.latent}, pixel_unshuffle={cfg.pixel_unshuffle})")
        self.reference_net = build_reference_net(unet2d) if cfg.use_reference_net else None
        self.build_motion(unet2d)                          # subclass networks (ControlNets copy the spatial U-Net)
        self.is_video = bool(cfg.temporal.use_temporal)
        self.denoiser = build_video_unet(cfg, unet2d) if self.is_video else unet2d
        if cfg.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.bank = attach_reference_attention(self.reference_net, self.denoiser) if self.reference_net is not None else None
        if self.reference_net is not None and not cfg.train_reference_net:
            self.reference_net.requires_grad_(False)
        # learned "null prompt": the ReferenceNet's context, and the denoiser's when a method has no other
        self.null_context = nn.Parameter(torch.randn(1, cfg.num_context_tokens, self.cross_attention_dim) * 0.02)
        self.noise_scheduler = make_train_scheduler(cfg)

    # ---- hooks ----------------------------------------------------------------------------------------------
    def build_motion(self, unet2d: nn.Module) -> None:
        """Create the motion-conditioning networks (called before the denoiser gets its temporal layers)."""

    def encode_motion(self, source: torch.Tensor, driving: torch.Tensor, keep_motion: torch.Tensor,
                      generator: Optional[torch.Generator] = None,
                      keypoints: Optional[torch.Tensor] = None) -> MotionState:
        """source B×3×r×r, driving B×T×3×r×r in [0, 1] at model resolution → per-frame state (values B×T×…).
        ``generator`` is set at training only (augmentations); ``keypoints`` B×T×K×2 normalised to [0, 1]."""
        B, T = driving.shape[:2]
        return {"keep_motion": keep_motion[:, None].expand(B, T)}

    def condition_denoiser(self, rows: MotionState, z_t: torch.Tensor, t: torch.Tensor):
        """rows: the state flattened to N rows; z_t N×C×h×w; t N → (encoder_hidden_states, down, mid)."""
        return self.null_context.expand(z_t.shape[0], -1, -1), None, None

    # ---- pieces ---------------------------------------------------------------------------------------------
    def scheduler_is_constant(self, node) -> bool:
        """diffusers' ``constant`` schedule without warmup keeps the lr constant: no scheduler."""
        return (str(node.get("_target_")) == DIFFUSERS_TARGET and str(node.get("name", "constant")) == "constant"
                and int(node.get("num_warmup_steps", 0) or 0) == 0)

    def scheduler_kwargs(self, node) -> dict:
        """diffusers' ``get_scheduler``: ``num_training_steps`` = ``trainer.max_steps`` (a decaying schedule
        without it is an error); ``name`` is checked against diffusers' SchedulerType."""
        if str(node.get("_target_")) != DIFFUSERS_TARGET:
            return {}
        from diffusers.optimization import SchedulerType

        name = str(node.get("name", "constant"))
        if name not in {t.value for t in SchedulerType}:
            raise ValueError(f"model.scheduler.name={name!r} is not one of {', '.join(t.value for t in SchedulerType)}")
        total = int(self.trainer.max_steps) if self._trainer is not None and self.trainer.max_steps > 0 else None
        if total is None and name not in ("constant", "constant_with_warmup"):
            raise ValueError(f"model.scheduler.name={name} decays over trainer.max_steps, which is not set")
        return {"num_training_steps": total}

    def parameter_counts(self) -> dict[str, int]:
        counts = {"denoiser": count_parameters(self.denoiser)}
        if self.reference_net is not None:
            counts["reference_net"] = count_parameters(self.reference_net)
        counts["total"] = count_parameters(self)
        counts["trainable"] = count_parameters(self, trainable_only=True)
        return counts

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """…×3×H×W in [0, 1] → …×3×r×r in [0, 1]."""
        lead = images.shape[:-3]
        out = resize(images.reshape(-1, *images.shape[-3:]), self.cfg.resolution)
        return out.view(*lead, *out.shape[-3:])

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        """N×3×r×r in [0, 1] → latents N×C×h×w."""
        return self.codec.encode(images01 * 2 - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.codec.decode(z) + 1) / 2).clamp(0, 1)

    def decode_clip(self, z: torch.Tensor) -> torch.Tensor:
        """B×T×C×h×w latents → B×T×3×H×W frames in [0, 1], in the codec's chunks (``vae_decode_chunk``)."""
        return ((self.codec.decode_clip(z) + 1) / 2).clamp(0, 1)

    def reference_t(self, t: torch.Tensor) -> Optional[torch.Tensor]:
        """The ReferenceNet's timestep for denoiser timesteps ``t`` (per reference row): None (t = 0) for
        ``reference_timestep=zero``, ``t`` itself for ``current``."""
        mode = as_choice(ReferenceTimestep, self.cfg.reference_timestep, "model.reference_timestep")
        return None if mode == "zero" else t

    def write_reference(self, z_ref: torch.Tensor, mask_ratio: float = 0.0,
                        generator: Optional[torch.Generator] = None, t: Optional[torch.Tensor] = None,
                        source: Optional[torch.Tensor] = None, context: Optional[torch.Tensor] = None) -> None:
        """Run the ReferenceNet on the clean reference latent ``z_ref`` at timestep ``t`` (per row; None: t = 0)
        and fill the bank with its tokens (``source``: the reference images, for :meth:`reference_context`;
        ``context``: its cross-attention context computed by the caller instead)."""
        if self.bank is None:
            return
        self.bank.clear()
        self.bank.writing = True
        try:
            ctx = self.reference_context(z_ref, source) if context is None else context
            if t is None:
                t = torch.zeros(z_ref.shape[0], device=z_ref.device, dtype=torch.long)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.train_reference_net):
                self.reference_net(z_ref, t, encoder_hidden_states=ctx)
        finally:
            self.bank.writing = False
        self.bank.mask_ratio = mask_ratio
        self.bank.generator = generator

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, state: MotionState, ref_index: torch.Tensor,
                keep_reference: torch.Tensor) -> torch.Tensor:
        """Model output for a clip batch: z_t Bz×T×C×h×w, t Bz, state values Bz×T×…, ref_index Bz (or Bz×T),
        keep_reference Bz."""
        Bz, T = z_t.shape[:2]
        rows = {k: v.flatten(0, 1) for k, v in state.items()}
        z_rows, t_rows = z_t.flatten(0, 1), t.repeat_interleave(T)
        ehs, down, mid = self.condition_denoiser(rows, z_rows, t_rows)
        if self.bank is not None:
            # ref_index Bz (one reference per clip) or Bz×T (a reference row per frame, as the official X-Portrait
            # feeds one posterior sample of the source per frame)
            self.bank.index = ref_index.flatten() if ref_index.ndim == 2 else ref_index.repeat_interleave(T)
            # every row keeps its reference: no key mask at all (SDPA's unmasked kernel)
            self.bank.keep = None if bool(keep_reference.all()) else keep_reference.repeat_interleave(T)
        kw = dict(encoder_hidden_states=ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if self.is_video:
            out = self.denoiser(z_t.permute(0, 2, 1, 3, 4), t, **kw).sample.permute(0, 2, 1, 3, 4)
        else:
            out = self.denoiser(z_rows, t_rows, **kw).sample.view_as(z_t)
        return out

    def step_generator(self) -> torch.Generator:
        """Training noise from (noise_seed, global_step, rank): a resumed run draws exactly the same noise."""
        seed = (int(self.cfg.noise_seed) * 1_000_003 + int(self.global_step) * 7919 + int(self.global_rank)) % (2**63)
        return torch.Generator().manual_seed(seed)

    def reference_mask_ratio(self) -> float:
        return 0.0

    def reference_context(self, z_ref: torch.Tensor, source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ReferenceNet's cross-attention context (default: the learned null prompt)."""
        return self.null_context.expand(z_ref.shape[0], -1, -1)

    def initial_latents(self, z_src: torch.Tensor, num_frames: int) -> Optional[torch.Tensor]:
        """Sampling start (B×T×C×h×w, noised to the first timestep by the sampler), or None: pure noise."""
        return None

    def reference_latents(self, src: torch.Tensor, z_src: torch.Tensor, num_frames: int,
                          generator: torch.Generator, chunk: Optional[int] = None) -> torch.Tensor:
        """The reference latent of every frame, B×T×C×h×w, as ``reference_latent`` says: ``mean`` repeats the
        source's posterior mean ``z_src``; ``sample_per_frame`` (official X-Portrait) draws one VAE posterior
        sample of the source ``src`` (model range) per frame from ``generator``, ``chunk`` rows per codec call
        (None: one call)."""
        B, T, shape = src.shape[0], num_frames, z_src.shape[1:]
        mode = as_choice(ReferenceLatent, self.cfg.reference_latent, "model.reference_latent")
        if mode == "sample_per_frame":
            rows = src.repeat_interleave(T, 0) * 2 - 1
            n = len(rows) if chunk is None else chunk
            z = torch.cat([self.codec.sample(rows[i:i + n], generator) for i in range(0, len(rows), n)])
            return z.view(B, T, *shape)
        return z_src[:, None].expand(B, T, *shape)

    def noised_reference_start(self, z_rep: torch.Tensor, noise: torch.Tensor) -> Optional[torch.Tensor]:
        """The sampling start ``x_T`` for ``initial_latent=noised_reference`` (official X-Portrait: ``q_sample`` of
        each frame's reference latent ``z_rep`` at t = T − 1 with ``noise``, both B×T×C×h×w); None for ``noise``
        (the sampler starts from scaled noise)."""
        if as_choice(InitialLatent, self.cfg.initial_latent, "model.initial_latent") == "noised_reference":
            t_last = torch.full((noise.shape[0] * noise.shape[1],), self.noise_scheduler.config.num_train_timesteps - 1,
                                dtype=torch.long, device=noise.device)
            return self.noise_scheduler.add_noise(z_rep.flatten(0, 1), noise.flatten(0, 1), t_last).view_as(noise)
        return None

    # ---- training -------------------------------------------------------------------------------------------
    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        source = self.to_model(batch["source"])
        driving = self.to_model(batch["driving"])
        target = self.to_model(batch.get("target", batch["driving"]))
        B, T = driving.shape[:2]
        dev = source.device
        gen = self.step_generator()
        keep = condition_keep_masks(B, {"reference": self.cfg.drop_reference_prob, "motion": self.cfg.drop_motion_prob},
                                    gen, device=dev)
        z0 = self.encode(target.flatten(0, 1))
        z0 = z0.view(B, T, *z0.shape[1:])
        noise = torch.randn(z0.shape, generator=gen).to(dev, z0.dtype)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (B,), generator=gen).to(dev)
        t_rows = t.repeat_interleave(T)
        z_t = self.noise_scheduler.add_noise(z0.flatten(0, 1), noise.flatten(0, 1), t_rows).view_as(z0)
        state = self.encode_motion(source, self.prepare_driving(batch, driving, gen), keep["motion"], gen,
                                   keypoints=normalise_keypoints(batch.get("keypoints"), batch["driving"].shape[-2:]))
        self.write_reference(self.encode(source), self.reference_mask_ratio(), gen, t=self.reference_t(t),
                             source=source)
        pred = self.denoise(z_t, t, state, torch.arange(B, device=dev), keep["reference"])
        kind = as_choice(PredictionType, self.cfg.prediction_type, "model.prediction_type")
        if kind == "epsilon":
            goal = noise
        elif kind == "v_prediction":
            goal = self.noise_scheduler.get_velocity(z0.flatten(0, 1), noise.flatten(0, 1), t_rows).view_as(z0)
        else:
            goal = z0
        terms = {}
        if self.use_loss("diffusion"):
            terms["loss_diffusion"] = F.mse_loss(pred.float(), goal.float())
        # the reference bank stays filled until the next write_reference / sampling clears it: with gradient
        # checkpointing, backward recomputes the self-attention blocks that read it
        return terms

    def prepare_driving(self, batch: dict, driving: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training-time driving input (subclasses: cross-identity frames, appearance augmentation)."""
        return driving

    def guidance_conditions(self, src: torch.Tensor, drv: torch.Tensor, use_cfg: bool,
                            negative: Optional[dict] = None, **kw) -> tuple[MotionState, torch.Tensor, torch.Tensor]:
        """The motion state of a sampling pass, ``keep_ref`` and the reference row of each batch row. With guidance
        the batch is [uncond; cond]: the uncond half drops what ``guidance_uncond`` names (``motion``: the motion
        condition, ``reference``: the reference attention); ``negative`` adds keywords to the uncond pass only
        (X-NeMo's guidance-negative face crop). ``kw`` go to both passes of ``encode_motion``."""
        B, dev = src.shape[0], src.device
        ones = torch.ones(B, dtype=torch.bool, device=dev)
        state = self.encode_motion(src, drv, ones, **kw)
        ref_index, keep_ref = torch.arange(B, device=dev), ones
        if use_cfg:
            drop = set(self.cfg.guidance_uncond)
            unknown = drop - {"reference", "motion"}
            if unknown:
                raise ValueError(f"guidance_uncond names unknown conditions {sorted(unknown)}")
            uncond = self.encode_motion(src, drv, ~ones if "motion" in drop else ones, **(negative or {}), **kw)
            state = {k: torch.cat([uncond[k], state[k]]) for k in state}
            ref_index = ref_index.repeat(2)
            keep_ref = torch.cat([~ones if "reference" in drop else ones, ones])
        return state, keep_ref, ref_index

    # ---- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def animate(self, source: torch.Tensor, driving: torch.Tensor, num_inference_steps: Optional[int] = None,
                sampler: Optional[str] = None, guidance_scale: Optional[float] = None,
                keypoints: Optional[torch.Tensor] = None, show_progress: bool = False,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Sample B×T×3×H×W frames in [0, 1] (windowed over T, classifier-free guided) in one trajectory.
        ``keypoints``: optional B×T×K×2 landmarks of ``driving`` in pixels (methods with local control use them);
        ``generator``: every draw (noise, posterior samples, window offsets); None: seeded by ``sample_seed``."""
        B, T = driving.shape[:2]
        H, W = driving.shape[-2:]
        was_training = self.training
        self.eval()
        try:
            src = self.to_model(source)
            drv = self.to_model(driving)
            dev = src.device
            scale = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
            use_cfg = scale != 1.0
            kp = normalise_keypoints(keypoints, (H, W))
            state, keep_ref, ref_index = self.guidance_conditions(src, drv, use_cfg, keypoints=kp)
            z_src = self.encode(src)
            z_ref_shape = z_src.shape[1:]
            gen = generator if generator is not None else torch.Generator().manual_seed(int(self.cfg.sample_seed))
            noise = torch.randn((B, T, *z_ref_shape), generator=gen).to(dev, src.dtype)
            z_rep = self.reference_latents(src, z_src, T, gen)
            per_frame_ref = self.cfg.reference_latent == "sample_per_frame"
            z_rows = z_rep.flatten(0, 1) if per_frame_ref else z_src        # reference rows: B·T or B
            if per_frame_ref:
                ref_index = torch.arange(B * T, device=dev).view(B, T).repeat(2 if use_cfg else 1, 1)
            per_step = self.reference_t(torch.zeros(B, dtype=torch.long, device=dev)) is not None
            written = {"t": None}
            src_rows = src.repeat_interleave(T, 0) if per_frame_ref else src
            if not per_step:
                self.write_reference(z_rows, source=src_rows)
            init = self.noised_reference_start(z_rep, noise)

            def denoise(z, t, s, e):
                tt = torch.full((z.shape[0] * (2 if use_cfg else 1),), int(t), device=dev, dtype=torch.long)
                if per_step and written["t"] != int(t):       # reference_timestep=current: once per step, all windows
                    self.write_reference(z_rows, t=torch.full((len(z_rows),), int(t), device=dev, dtype=torch.long),
                                         source=src_rows)
                    written["t"] = int(t)

                def take(v):                                   # frames [s, e) or the frame indices s
                    return v[:, s:e] if e is not None else v[:, s.to(v.device)]

                window = {k: take(v) for k, v in state.items()}
                ri = take(ref_index) if ref_index.ndim == 2 else ref_index
                if not use_cfg:
                    return self.denoise(z, tt, window, ri, keep_ref)
                out = self.denoise(torch.cat([z, z]), tt, window, ri, keep_ref)
                eps_u, eps_c = out.chunk(2)
                return guide(eps_u, eps_c, scale)

            steps = num_inference_steps or self.cfg.num_inference_steps
            latents = sample_clip(denoise, noise, make_sampler(self.cfg, sampler), steps, self.cfg.window_size,
                                  self.cfg.window_overlap, show_progress=show_progress,
                                  window_schedule=self.cfg.window_schedule, generator=gen, init_latents=init,
                                  offset_range=int(self.cfg.window_offset_range),
                                  init_clean=self.initial_latents(z_src, T))
            frames = self.decode(latents.flatten(0, 1))
            if frames.shape[-2:] != (H, W):
                frames = F.interpolate(frames, size=(H, W), mode="bilinear", align_corners=False).clamp(0, 1)
            return frames.view(B, T, 3, H, W)
        finally:
            if self.bank is not None:
                self.bank.clear()
            self.train(was_training)
