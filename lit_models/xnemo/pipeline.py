"""X-NeMo's sampling pipeline, apart from the networks (diffusers style: the LightningModule holds the networks, this
holds the loop). It is the official ``Pose2VideoPipeline.__call__`` of x-nemo-inference
``src/pipelines/pipeline_pose2vid_motenc_long.py`` with the released script's arguments (``scripts/pose2vid_xnemo.py``:
35 DDIM steps, guidance 2.5, ``context_frames=24``, ``context_overlap=4``), on the whole driving clip in one trajectory:

1. ``c_img`` = the reference's image embedding; the uncond branch gets zeros, no reference attention and the motion
   tokens of the reference's own face crop (``reference_motion``; default: the reference image).
2. ``z_ref = E(ref)`` (posterior mean × 0.18215); the ReferenceNet writes its tokens once, at t = 0.
3. Start: ``init_latents=blurred_reference`` — ``GaussianBlur(9, σ 18)(z_ref)`` on every frame noised to the first
   timestep with one noise tensor for the whole clip (``noise`` B×T×C×h×w, or drawn from ``generator``); ``noise`` —
   that noise × σ_init.
4. Every step: an offset (``offsets[i]``, or drawn from ``generator`` in ``[0, window_offset_range)``; the official
   ``random.randint(0, 23)``), the step's windows (``window_schedule``: ``uniform`` official, see
   :func:`lit_models.diffusion.sampling.uniform_windows`), each window's [uncond, cond] model output summed into
   its frames and divided by each frame's window count, then guidance ``ε = ε_u + s (ε_c − ε_u)`` and one
   scheduler step on the whole clip (eta 0).
5. Decode: ``latents / 0.18215`` in chunks of ``vae_decode_chunk`` frames (official 25), each chunk one temporal
   clip for SVD-xt's ``AutoencoderKLTemporalDecoder`` (``vae_type=temporal_decoder``), frame by frame for
   ``AutoencoderKL``.

All noise and offsets come from one generator (default: ``torch.Generator().manual_seed(cfg.sample_seed)``, drawn on
the generator's device and moved to the model's), so a clip of any length is reproducible and no noise repeats
across windows. The networks run on the device and dtype of the model's parameters.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from lit_models.diffusion.sampling import guide, make_sampler, set_inference_timesteps, step_windows


class XNeMoPipeline:
    """``XNeMoPipeline(model)(source, driving, …)`` → B×T×3×H×W frames in [0, 1] (``model``: an ``XNeMo``)."""

    def __init__(self, model):
        self.model = model
        self.last_offsets: list[int] = []          # the offsets the last call used, one per step
        self.last_windows: list[list[torch.Tensor]] = []

    @property
    def device(self) -> torch.device:
        return next(self.model.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.denoiser.parameters()).dtype

    def _randn(self, shape, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device).to(self.device, self.dtype)

    def _offset(self, i: int, T: int, offsets: Optional[Sequence[int]], generator: torch.Generator) -> int:
        cfg = self.model.cfg
        if cfg.window_schedule == "blend":
            return 0
        if offsets is not None:
            return int(offsets[i])
        hi = int(cfg.window_offset_range) or T
        return int(torch.randint(0, hi, (), generator=generator, device=generator.device))

    @torch.no_grad()
    def __call__(self, source: torch.Tensor, driving: torch.Tensor, num_inference_steps: Optional[int] = None,
                 guidance_scale: Optional[float] = None, sampler: Optional[str] = None,
                 generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
                 offsets: Optional[Sequence[int]] = None, reference_motion: Optional[torch.Tensor] = None,
                 clip_pixels: Optional[torch.Tensor] = None, show_progress: bool = False,
                 output_size: Optional[tuple[int, int]] = None, output_type: str = "frames") -> torch.Tensor:
        """``source`` B×3×H×W and ``driving`` B×T×3×H'×W' in [0, 1] (driving: the motion crops; the motion encoder
        resizes them itself — official: 224² Lanczos crops), ``reference_motion`` B×3×h×w: the face crop of the
        reference for the guidance negative (official: its tight 1.1× box), ``clip_pixels`` B×3×224×224: the CLIP
        input of the reference (official: PIL resize + ``CLIPImageProcessor``; default: made from ``source``).
        ``noise`` / ``offsets`` replace the generator's draws (tests). ``output_type``: frames (B×T×3×H×W, ``output_size`` or the source's size) |
        latents (B×T×C×h×w before decoding)."""
        model, cfg = self.model, self.model.cfg
        if cfg.reference_timestep != "zero" or cfg.reference_latent != "mean" or cfg.initial_latent != "noise":
            raise ValueError("XNeMoPipeline samples the X-NeMo way: reference_timestep=zero, reference_latent=mean, "
                             f"initial_latent=noise (got {cfg.reference_timestep}, {cfg.reference_latent}, "
                             f"{cfg.initial_latent}); the start is set by model.init_latents")
        if driving.ndim != 5 or source.ndim != 4 or driving.shape[0] != source.shape[0]:
            raise ValueError(f"XNeMoPipeline: source B×3×H×W and driving B×T×3×H×W, got {tuple(source.shape)} and "
                             f"{tuple(driving.shape)}")
        dev, dt = self.device, self.dtype
        B, T = driving.shape[:2]
        H, W = output_size or tuple(source.shape[-2:])
        gen = generator if generator is not None else torch.Generator().manual_seed(int(cfg.sample_seed))
        scale = float(cfg.guidance_scale if guidance_scale is None else guidance_scale)
        use_cfg = scale != 1.0
        steps = int(num_inference_steps or cfg.num_inference_steps)

        src = model.to_model(source.to(dev, dt))
        drv = driving.to(dev, dt)
        ctx = None
        if clip_pixels is not None and getattr(model, "image_encoder", None) is not None:
            ctx = model.image_context(src, pixel_values=clip_pixels.to(dev, dt)).to(dt)
        extra = {} if ctx is None else {"image_embeds": ctx}
        neg_src = src if reference_motion is None else reference_motion.to(dev, dt)
        state, keep_ref, ref_index = model.guidance_conditions(src, drv, use_cfg,
                                                               negative={"negative_source": neg_src}, **extra)

        z_ref = model.encode(src)                                            # B×C×h×w
        model.write_reference(z_ref, source=src, context=ctx)
        scheduler = make_sampler(cfg, sampler)
        set_inference_timesteps(scheduler, steps, device=dev)
        shape = (B, T, *z_ref.shape[1:])
        if noise is None:
            noise = self._randn(shape, gen)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {shape} (B×T×C×h×w), got {tuple(noise.shape)}")
        noise = noise.to(dev, dt)
        clean = model.initial_latents(z_ref, T)
        latents = noise * scheduler.init_noise_sigma if clean is None else scheduler.add_noise(
            clean, noise, scheduler.timesteps[:1])
        if offsets is not None and len(offsets) < len(scheduler.timesteps):
            raise ValueError(f"offsets: one per step ({len(scheduler.timesteps)}), got {len(offsets)}")

        from tqdm.auto import tqdm

        self.last_offsets, self.last_windows = [], []
        try:
            for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not show_progress, leave=False)):
                offset = self._offset(i, T, offsets, gen)
                windows, weights = step_windows(cfg.window_schedule, T, int(cfg.window_size),
                                                int(cfg.window_overlap), offset)
                self.last_offsets.append(offset)
                self.last_windows.append(windows)
                model_in = scheduler.scale_model_input(latents, t)
                acc = None
                count = torch.zeros(T, device=dev, dtype=dt)
                for k, idx in enumerate(windows):
                    idx_d = idx.to(dev)
                    z = model_in[:, idx_d]
                    n = z.shape[0] * (2 if use_cfg else 1)
                    tt = torch.full((n,), int(t), device=dev, dtype=torch.long)
                    window = {key: v[:, idx_d] for key, v in state.items()}
                    out = model.denoise(torch.cat([z, z]) if use_cfg else z, tt, window, ref_index, keep_ref)
                    w = torch.ones(len(idx), device=dev, dtype=dt) if weights is None else weights[k].to(dev, dt)
                    if acc is None:
                        acc = out.new_zeros((out.shape[0], T, *out.shape[2:]))
                    acc.index_add_(1, idx_d, out * w.view(1, -1, 1, 1, 1))
                    count.index_add_(0, idx_d, w)
                pred = acc / count.view(1, -1, 1, 1, 1)
                eps = guide(*pred.chunk(2), scale) if use_cfg else pred
                latents = scheduler.step(eps, t, latents).prev_sample
        finally:
            if model.bank is not None:
                model.bank.clear()
            if getattr(model, "motion_context", None) is not None:
                model.motion_context.clear()
        if output_type == "latents":
            return latents
        if output_type != "frames":
            raise ValueError(f"output_type must be frames | latents, got {output_type!r}")
        frames = model.decode_clip(latents)                                  # B×T×3×r×r in [0, 1]
        if frames.shape[-2:] != (H, W):
            frames = F.interpolate(frames.flatten(0, 1), size=(H, W), mode="bilinear",
                                   align_corners=False).clamp(0, 1).view(B, T, 3, H, W)
        return frames
