"""Schedulers, classifier-free guidance and windowed long-video sampling (the pipeline, separate from the networks).

* DDPM training: ``z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε`` (``DDPMScheduler.add_noise``), loss ``‖ε − ε_θ(z_t, t, c)‖²``.
* Sampling: DDIM or DPM-Solver++ (multistep) built from the same noise schedule; ``timestep_spacing`` picks the
  inference timesteps (``trailing`` starts at t = T−1, which few-step sampling needs).
* Guidance: ``ε̂ = ε_θ(z_t, ∅) + s · (ε_θ(z_t, c) − ε_θ(z_t, ∅))``, where ``∅`` drops the conditions listed in
  ``guidance_uncond``; training drops each condition independently (:func:`condition_keep_masks`).
* Long videos: the clip is covered by windows of ``window_size`` frames overlapping by ``window_overlap``; at
  every step each window is denoised and the ε predictions are blended with linear ramps over the overlap
  (weights sum to 1 per frame), then one scheduler step runs on the whole clip, so windows share one trajectory
  and join without seams. ``window_schedule=circular`` is the official X-Portrait variant: windows start at a
  random offset per step, wrap around the clip, and ε is averaged; ``uniform`` is the official X-NeMo one (the
  AnimateDiff ``uniform`` context scheduler, closed loop, shifted by a random offset per step, ε averaged).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from lit_models.diffusion.config import DiffusionConfig, Sampler, TimestepSpacing, WindowSchedule
from toolbox.choices import as_choice


def _schedule_kwargs(cfg: DiffusionConfig) -> dict:
    return dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=str(cfg.beta_schedule),
                beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type=str(cfg.prediction_type))


def make_train_scheduler(cfg: DiffusionConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**_schedule_kwargs(cfg), clip_sample=False)


def make_sampler(cfg: DiffusionConfig, kind: Optional[str] = None):
    """A fresh sampling scheduler (it holds per-run state): ``ddim`` or ``dpmpp`` (DPM-Solver++ 2M)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    kind = as_choice(Sampler, kind or cfg.sampler, "sampler")
    spacing = as_choice(TimestepSpacing, getattr(cfg, "timestep_spacing", "leading"), "timestep_spacing")
    if spacing == "ldm_uniform":
        if kind != "ddim":
            raise ValueError(f"timestep_spacing=ldm_uniform (the LDM DDIM sampler's) needs sampler=ddim, got {kind!r}")
        sched = DDIMScheduler(**_schedule_kwargs(cfg), clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              timestep_spacing="leading")
        sched.ldm_uniform = True
        return sched
    if kind == "ddim":
        return DDIMScheduler(**_schedule_kwargs(cfg), clip_sample=False,
                             set_alpha_to_one=bool(getattr(cfg, "set_alpha_to_one", False)),
                             steps_offset=1 if spacing == "leading" else 0, timestep_spacing=str(spacing))
    return DPMSolverMultistepScheduler(**_schedule_kwargs(cfg), algorithm_type="dpmsolver++", solver_order=2,
                                       timestep_spacing=str(spacing))


def condition_keep_masks(batch_size: int, drop_probs: dict[str, float], generator: torch.Generator,
                         device=None) -> dict[str, torch.Tensor]:
    """Independent per-condition dropout for classifier-free guidance: ``{name: B bool, True = keep}``."""
    out = {}
    for name in sorted(drop_probs):
        u = torch.rand(batch_size, generator=generator)
        out[name] = (u >= float(drop_probs[name])).to(device)
    return out


def guide(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    return eps_uncond + scale * (eps_cond - eps_uncond)


def window_spans(num_frames: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` of ``size`` frames covering ``num_frames``, consecutive ones sharing ≥ ``overlap``
    frames (the last window is aligned to the end, so every window is full)."""
    if num_frames <= size:
        return [(0, num_frames)]
    if not 0 <= overlap < size:
        raise ValueError(f"window_overlap must be in [0, window_size), got {overlap} for size {size}")
    stride = size - overlap
    starts = list(range(0, num_frames - size + 1, stride))
    if starts[-1] + size < num_frames:
        starts.append(num_frames - size)
    return [(s, s + size) for s in starts]


def window_weights(spans: list[tuple[int, int]], num_frames: int) -> list[torch.Tensor]:
    """Per-window frame weights: linear ramps over each overlap, normalised to sum to 1 on every frame."""
    raw = []
    for i, (s, e) in enumerate(spans):
        w = torch.ones(e - s)
        if i > 0:                                        # ramp up over the overlap with the previous window
            ov = spans[i - 1][1] - s
            if ov > 0:
                w[:ov] = torch.arange(1, ov + 1) / (ov + 1)
        if i + 1 < len(spans):                           # ramp down over the overlap with the next window
            ov = e - spans[i + 1][0]
            if ov > 0:
                w[-ov:] = torch.minimum(w[-ov:], torch.arange(ov, 0, -1) / (ov + 1))
        raw.append(w)
    total = torch.zeros(num_frames)
    for (s, e), w in zip(spans, raw):
        total[s:e] += w
    return [w / total[s:e] for (s, e), w in zip(spans, raw)]


def blend_windows(predict: Callable[[int, int], torch.Tensor], num_frames: int, size: int, overlap: int,
                  frame_dim: int = 1) -> torch.Tensor:
    """``Σ_w weight_w · predict(start_w, end_w)`` over the windows (``predict`` returns the window's frames on
    ``frame_dim``)."""
    spans = window_spans(num_frames, size, overlap)
    weights = window_weights(spans, num_frames)
    out = None
    for (s, e), w in zip(spans, weights):
        pred = predict(s, e)
        shape = [1] * pred.ndim
        shape[frame_dim] = e - s
        w = w.to(pred.device, pred.dtype).view(shape)
        if out is None:
            out_shape = list(pred.shape)
            out_shape[frame_dim] = num_frames
            out = pred.new_zeros(out_shape)
        out.narrow(frame_dim, s, e - s).add_(w * pred)
    return out


def set_inference_timesteps(scheduler, num_inference_steps: int, device=None) -> None:
    """``scheduler.set_timesteps``; for ``timestep_spacing=ldm_uniform`` the LDM DDIM sampler's "uniform"
    discretisation ``range(0, T, T // steps) + 1`` (30 steps of 1000: 31 timesteps 991 … 1, the official X-Portrait
    schedule). diffusers' DDIM step then uses ``t − T // steps`` as the previous timestep, which is the next entry of
    that list, and ᾱ_0 after t = 1, as the LDM sampler does."""
    scheduler.set_timesteps(num_inference_steps, device=device)
    if getattr(scheduler, "ldm_uniform", False):
        T = scheduler.config.num_train_timesteps
        scheduler.timesteps = (torch.arange(0, T, T // num_inference_steps) + 1).flip(0).to(device)


def circular_windows(num_frames: int, size: int, overlap: int, offset: int) -> list[torch.Tensor]:
    """Frame indices of the official X-Portrait windows: ``size`` frames starting at ``offset`` with stride
    ``size − overlap``, wrapping around the clip (``% num_frames``) until the clip is covered."""
    if num_frames <= size:
        return [torch.arange(num_frames)]
    if not 0 <= overlap < size:
        raise ValueError(f"window_overlap must be in [0, window_size), got {overlap} for size {size}")
    return [torch.arange(s, s + size) % num_frames for s in range(offset, offset + num_frames - overlap, size - overlap)]


def uniform_windows(num_frames: int, size: int, overlap: int, offset: int, closed_loop: bool = True) -> list[torch.Tensor]:
    """Frame indices of the official X-NeMo windows: the AnimateDiff / AniPortrait ``uniform`` context scheduler
    (x-nemo-inference ``src/pipelines/context.py``) as ``Pose2VideoPipeline.__call__`` calls it — ``step=0``,
    ``context_stride=1``, ``closed_loop=True`` — so the windows start at ``0, size − overlap, …`` up to the clip end
    (``< num_frames``; ``< num_frames − overlap`` when not closed), are ``size`` frames long and are shifted by
    ``offset`` modulo the clip. A clip of at most ``size`` frames is one window ``0 … N−1``, not shifted."""
    if num_frames <= size:
        return [torch.arange(num_frames)]
    if not 0 <= overlap < size:
        raise ValueError(f"window_overlap must be in [0, window_size), got {overlap} for size {size}")
    stop = num_frames + (0 if closed_loop else -overlap)
    return [(torch.arange(j, j + size) + offset) % num_frames for j in range(0, stop, size - overlap)]


def step_windows(schedule: str, num_frames: int, size: int, overlap: int,
                 offset: int = 0) -> tuple[list[torch.Tensor], Optional[list[torch.Tensor]]]:
    """One step's windows: (frame indices per window, blend weights per window or None = plain mean per frame).
    ``blend``: fixed windows with linear ramps (``offset`` unused); ``circular``: official X-Portrait;
    ``uniform``: official X-NeMo."""
    schedule = as_choice(WindowSchedule, schedule, "window_schedule")
    if schedule == "blend":
        spans = window_spans(num_frames, size, overlap)
        return [torch.arange(s, e) for s, e in spans], window_weights(spans, num_frames)
    if schedule == "circular":
        return circular_windows(num_frames, size, overlap, offset), None
    return uniform_windows(num_frames, size, overlap, offset), None


def average_windows(predict: Callable[[torch.Tensor], torch.Tensor], windows: list[torch.Tensor], num_frames: int,
                    frame_dim: int = 1) -> torch.Tensor:
    """Mean over the windows covering each frame of ``predict(indices)`` (the official X-Portrait eps averaging)."""
    out, counts = None, torch.zeros(num_frames)
    for idx in windows:
        pred = predict(idx)
        if out is None:
            shape = list(pred.shape)
            shape[frame_dim] = num_frames
            out = pred.new_zeros(shape)
        out.index_add_(frame_dim, idx.to(pred.device), pred)
        counts.index_add_(0, idx, torch.ones(len(idx)))
    shape = [1] * out.ndim
    shape[frame_dim] = num_frames
    return out / counts.to(out.device, out.dtype).view(shape)


def sample_clip(denoise: Callable[..., torch.Tensor], noise: torch.Tensor,
                scheduler, num_inference_steps: int, window_size: int, window_overlap: int,
                show_progress: bool = False, window_schedule: str = "blend",
                generator: Optional[torch.Generator] = None, init_latents: Optional[torch.Tensor] = None,
                init_clean: Optional[torch.Tensor] = None, offset_range: int = 0) -> torch.Tensor:
    """Run the reverse process on a B×T×C×h×w clip. ``window_schedule=blend``: ``denoise(z_window, t, start, end)``
    returns the (guided) model output for frames ``[start, end)`` and windows are blended with linear ramps;
    ``circular`` (official X-Portrait) / ``uniform`` (official X-NeMo): ``denoise(z_window, t, indices, None)`` for
    windows that start at a random
    offset per step (``generator``; drawn from ``[0, offset_range)``, 0: the clip length) and wrap around,
    averaged. ``init_latents`` replaces ``noise · σ_init``
    (e.g. the noised reference latent, X-Portrait); ``init_clean`` (B×T×C×h×w) is noised to the first timestep with
    ``noise`` instead (e.g. the blurred reference latent, X-NeMo). At most one of the two."""
    from tqdm.auto import tqdm

    window_schedule = as_choice(WindowSchedule, window_schedule, "window_schedule")
    if init_latents is not None and init_clean is not None:
        raise ValueError("sample_clip: pass init_latents or init_clean, not both")
    set_inference_timesteps(scheduler, num_inference_steps, device=noise.device)
    if init_clean is not None:
        latents = scheduler.add_noise(init_clean, noise, scheduler.timesteps[:1])
    else:
        latents = noise * scheduler.init_noise_sigma if init_latents is None else init_latents
    T = latents.shape[1]
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not show_progress, leave=False):
        model_in = scheduler.scale_model_input(latents, t)
        if window_schedule == "blend":
            eps = blend_windows(lambda s, e: denoise(model_in[:, s:e], t, s, e), T, window_size, window_overlap)
        else:
            offset = int(torch.randint(0, offset_range if offset_range > 0 else T, (), generator=generator))
            windows = step_windows(window_schedule, T, window_size, window_overlap, offset)[0]
            eps = average_windows(lambda idx: denoise(model_in[:, idx.to(model_in.device)], t, idx, None), windows, T)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents
