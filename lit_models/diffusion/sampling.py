"""Schedulers, classifier-free guidance and windowed long-video sampling (the pipeline, separate from the networks).

* DDPM training: ``z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε`` (``DDPMScheduler.add_noise``), loss ``‖ε − ε_θ(z_t, t, c)‖²``.
* Sampling: DDIM or DPM-Solver++ (multistep) built from the same noise schedule; ``timestep_spacing`` picks the
  inference timesteps (``trailing`` starts at t = T−1, which few-step sampling needs).
* Guidance: ``ε̂ = ε_θ(z_t, ∅) + s · (ε_θ(z_t, c) − ε_θ(z_t, ∅))``, where ``∅`` drops the conditions listed in
  ``guidance_uncond``; training drops each condition independently (:func:`condition_keep_masks`).
* Long videos: the clip is covered by windows of ``window_size`` frames overlapping by ``window_overlap``; at
  every step each window is denoised and the ε predictions are blended with linear ramps over the overlap
  (weights sum to 1 per frame), then one scheduler step runs on the whole clip, so windows share one trajectory
  and join without seams.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from lit_models.diffusion.config import DiffusionConfig


def _schedule_kwargs(cfg: DiffusionConfig) -> dict:
    return dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, beta_start=cfg.beta_start,
                beta_end=cfg.beta_end, prediction_type=cfg.prediction_type)


def make_train_scheduler(cfg: DiffusionConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**_schedule_kwargs(cfg), clip_sample=False)


def make_sampler(cfg: DiffusionConfig, kind: Optional[str] = None):
    """A fresh sampling scheduler (it holds per-run state): ``ddim`` or ``dpmpp`` (DPM-Solver++ 2M)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    kind = kind or cfg.sampler
    spacing = getattr(cfg, "timestep_spacing", "leading")
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"timestep_spacing must be leading | trailing | linspace, got {spacing!r}")
    if kind == "ddim":
        return DDIMScheduler(**_schedule_kwargs(cfg), clip_sample=False,
                             set_alpha_to_one=bool(getattr(cfg, "set_alpha_to_one", False)),
                             steps_offset=1 if spacing == "leading" else 0, timestep_spacing=spacing)
    if kind == "dpmpp":
        return DPMSolverMultistepScheduler(**_schedule_kwargs(cfg), algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing=spacing)
    raise ValueError(f"sampler must be ddim | dpmpp, got {kind!r}")


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


def sample_clip(denoise: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor], noise: torch.Tensor,
                scheduler, num_inference_steps: int, window_size: int, window_overlap: int,
                show_progress: bool = False, init_latents: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run the reverse process on a B×T×C×h×w clip. ``denoise(z_window, t, start, end)`` returns the (guided) model
    output for frames ``[start, end)``; windows are blended on it before each scheduler step. ``init_latents``
    (optional, B×T×C×h×w): start from them noised to the first timestep instead of from pure noise."""
    from tqdm.auto import tqdm

    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    if init_latents is None:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(init_latents, noise, scheduler.timesteps[:1])
    T = latents.shape[1]
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not show_progress, leave=False):
        model_in = scheduler.scale_model_input(latents, t)
        eps = blend_windows(lambda s, e: denoise(model_in[:, s:e], t, s, e), T, window_size, window_overlap)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents
