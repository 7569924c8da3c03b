"""X-Portrait's sampling pipeline (bytedance/X-Portrait ``DDIMSampler_ReferenceOnly.ddim_sampling`` with
``num_overlap > 0``, as ``core/test_xportrait.py`` calls it), apart from the networks.

The whole driving clip of N frames is one trajectory ``x_T → x_0`` (N latents). At every DDIM step:

* an offset ``o`` is drawn uniformly from ``[0, N)`` (official ``random.randint(0, num_frames - 1)``; here from the
  one ``generator`` of the call);
* windows ``arange(s, s + W) % N`` for ``s in range(o, o + N − overlap, W − overlap)`` (W = ``window_size`` = the
  official ``num_drivings`` 16, overlap = ``num_mix`` 4: stride 12), so windows wrap around the clip;
  for N ≤ W this is ONE window of W indices that repeats frames (the official code does not special-case it);
* each window is denoised (guided ε of the 16 latents, their motion conditions and reference rows, the temporal
  layers seeing the window in that order) and written back with the official
  ``model_output_all[indices] += eps; counts[indices] += 1`` — a non-accumulating index write, so a frame that
  occurs twice in one window gets the value of its LAST occurrence and is counted once;
* ε is the per-frame mean over the windows and one DDIM step runs on the whole clip.

The reference latents (``reference_latent=sample_per_frame``: one VAE posterior sample of the source per frame, the
official ``get_first_stage_encoding(encode_first_stage(src))``) and the decode run in chunks of 16 frames (official
``vae_bs = 16``), so memory stays bounded for clips of any length; the ReferenceNet runs per window on that window's
reference rows (official ``image_control`` indexed per window).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from lit_models.diffusion.config import WindowSchedule
from lit_models.diffusion.module import normalise_keypoints
from lit_models.diffusion.sampling import blend_windows, guide, make_sampler, set_inference_timesteps
from toolbox.choices import as_choice

VAE_CHUNK = 16          # official vae_bs


def official_windows(num_frames: int, size: int, overlap: int, offset: int) -> list[torch.Tensor]:
    """Frame indices of every window of one DDIM step (``DDIMSampler_ReferenceOnly.ddim_sampling``):
    ``[arange(s, s + size) % N for s in range(offset, offset + N − overlap, size − overlap)]``, N ≤ size included
    (one window that repeats frames). N ≤ overlap, where the official loop has no window, gets that one window."""
    if not 0 <= overlap < size:
        raise ValueError(f"window_overlap must be in [0, window_size), got {overlap} for size {size}")
    if not 0 <= offset < num_frames:
        raise ValueError(f"window offset {offset} outside [0, {num_frames})")
    # N ≤ overlap: the official range is empty (its counts stay 0: NaN frames); here the one window N ≤ size gets
    starts = list(range(offset, offset + num_frames - overlap, size - overlap)) or [offset]
    return [torch.arange(s, s + size) % num_frames for s in starts]


def last_occurrence(idx: torch.Tensor) -> torch.Tensor:
    """Positions in ``idx`` that a non-accumulating ``x[idx] = y`` keeps: for each distinct frame, its last
    position (ascending by position)."""
    n = len(idx)
    pos = torch.arange(n)
    keep = torch.ones(n, dtype=torch.bool)
    for j in range(n):
        if bool((idx[j + 1:] == idx[j]).any()):
            keep[j] = False
    return pos[keep]


def official_average(predict: Callable[[torch.Tensor], torch.Tensor], windows: Sequence[torch.Tensor],
                     num_frames: int, frame_dim: int = 1) -> torch.Tensor:
    """``Σ_w eps_w[indices] / counts`` with the official index semantics (:func:`last_occurrence`)."""
    out, counts = None, torch.zeros(num_frames)
    for idx in windows:
        pred = predict(idx)
        keep = last_occurrence(idx)
        frames = idx[keep]
        if out is None:       # accumulated in fp32 at least (official: zeros_like(img), the fp32 latents)
            shape = list(pred.shape)
            shape[frame_dim] = num_frames
            out = pred.new_zeros(shape, dtype=torch.promote_types(pred.dtype, torch.float32))
        out.index_add_(frame_dim, frames.to(pred.device),
                       pred.index_select(frame_dim, keep.to(pred.device)).to(out.dtype))
        counts.index_add_(0, frames, torch.ones(len(frames)))
    shape = [1] * out.ndim
    shape[frame_dim] = num_frames
    return out / counts.to(out.device, out.dtype).view(shape)


def draw_offset(num_frames: int, generator: Optional[torch.Generator], offset_range: int = 0) -> int:
    """One step's window offset, uniform in ``[0, offset_range or N)``."""
    high = offset_range if offset_range > 0 else num_frames
    return int(torch.randint(0, high, (), generator=generator))


class XPortraitPipeline:
    """``pipe(source, driving, keypoints=None, generator=None) -> frames`` for an :class:`XPortrait` model."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, source: torch.Tensor, driving: torch.Tensor, *, keypoints: Optional[torch.Tensor] = None,
                 patch_centres: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None, num_inference_steps: Optional[int] = None,
                 sampler: Optional[str] = None, guidance_scale: Optional[float] = None, show_progress: bool = False,
                 noise: Optional[torch.Tensor] = None, offsets: Optional[Sequence[int]] = None) -> torch.Tensor:
        """source B×3×H×W, driving B×T×3×H×W in [0, 1] → B×T×3×H×W. ``keypoints`` B×T×K×2 landmarks of ``driving``
        in pixels (the local eye / mouth patches). ``noise`` (B×T×C×h×w) and ``offsets`` (one per step) replace
        the draws from ``generator`` (tests against the official loop)."""
        from tqdm.auto import tqdm

        m, cfg = self.model, self.model.cfg
        gen = generator if generator is not None else torch.Generator().manual_seed(int(cfg.sample_seed))
        B, T = driving.shape[:2]
        H, W = driving.shape[-2:]
        src, drv = m.to_model(source), m.to_model(driving)
        dev = src.device
        scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        use_cfg = scale != 1.0
        kp = normalise_keypoints(keypoints, (H, W))
        pc = None if patch_centres is None else \
            patch_centres.float() / torch.tensor([W, H], dtype=torch.float32, device=patch_centres.device)
        extra = {} if pc is None else {"patch_centres": pc}
        state, keep_ref, _ = m.guidance_conditions(src, drv, use_cfg, keypoints=kp, **extra)
        z_src = m.encode(src)
        zshape = z_src.shape[1:]
        if noise is None:
            noise = torch.randn((B, T, *zshape), generator=gen)
        noise = noise.to(dev, z_src.dtype)
        z_rep = m.reference_latents(src, z_src, T, gen, chunk=VAE_CHUNK)      # the official 16 frames per call
        per_frame_ref = cfg.reference_latent == "sample_per_frame"
        per_step = m.reference_t(torch.zeros(B, dtype=torch.long, device=dev)) is not None
        start = m.noised_reference_start(z_rep, noise)
        latents, init_scaled = (noise, True) if start is None else (start, False)
        init_clean = m.initial_latents(z_src, T)

        scheduler = make_sampler(cfg, sampler)
        steps = num_inference_steps or cfg.num_inference_steps
        set_inference_timesteps(scheduler, steps, device=dev)
        if init_clean is not None:
            latents = scheduler.add_noise(init_clean, noise, scheduler.timesteps[:1])
        elif init_scaled:
            latents = latents * scheduler.init_noise_sigma
        if offsets is not None and len(offsets) != len(scheduler.timesteps):
            raise ValueError(f"offsets: {len(offsets)} given for {len(scheduler.timesteps)} steps")
        if not per_frame_ref and not per_step:
            m.write_reference(z_src, source=src)
        schedule = as_choice(WindowSchedule, cfg.window_schedule, "model.window_schedule")
        if schedule == WindowSchedule.uniform:
            raise ValueError("model.window_schedule=uniform (X-NeMo's windows): the X-Portrait pipeline samples "
                             "circular | blend")
        written = {"t": None}

        def denoise(z, t, idx):
            """Guided model output of the window ``idx`` (frame indices, duplicates allowed)."""
            tt = torch.full((z.shape[0] * (2 if use_cfg else 1),), int(t), device=dev, dtype=torch.long)
            window = {k: v[:, idx.to(v.device)] for k, v in state.items()}
            if per_frame_ref:       # the window's own reference rows (official image_control[indices])
                z_rows = z_rep[:, idx.to(dev)].flatten(0, 1)
                tr = None if not per_step else torch.full((len(z_rows),), int(t), device=dev, dtype=torch.long)
                m.write_reference(z_rows, t=tr, source=src.repeat_interleave(len(idx), 0))
                ri = torch.arange(len(z_rows), device=dev).view(B, len(idx))
                ri = ri.repeat(2, 1) if use_cfg else ri
            else:
                if per_step and written["t"] != int(t):
                    m.write_reference(z_src, t=torch.full((B,), int(t), device=dev, dtype=torch.long), source=src)
                    written["t"] = int(t)
                ri = torch.arange(B, device=dev)
                ri = ri.repeat(2) if use_cfg else ri
            if not use_cfg:
                return m.denoise(z, tt, window, ri, keep_ref)
            eps_u, eps_c = m.denoise(torch.cat([z, z]), tt, window, ri, keep_ref).chunk(2)
            return guide(eps_u, eps_c, scale)

        try:
            for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not show_progress, leave=False)):
                model_in = scheduler.scale_model_input(latents, t)
                if schedule == "circular":
                    off = int(offsets[i]) if offsets is not None else draw_offset(T, gen, int(cfg.window_offset_range))
                    windows = official_windows(T, int(cfg.window_size), int(cfg.window_overlap), off)
                    eps = official_average(lambda idx: denoise(model_in[:, idx.to(dev)], t, idx), windows, T)
                else:
                    eps = blend_windows(lambda s, e: denoise(model_in[:, s:e], t, torch.arange(s, e)), T,
                                        int(cfg.window_size), int(cfg.window_overlap))
                latents = scheduler.step(eps, t, latents).prev_sample
        finally:
            if m.bank is not None:
                m.bank.clear()
        flat = latents.flatten(0, 1)
        frames = torch.cat([m.decode(flat[i:i + VAE_CHUNK]) for i in range(0, len(flat), VAE_CHUNK)])
        if frames.shape[-2:] != (H, W):
            frames = F.interpolate(frames.float(), size=(H, W), mode="bilinear", align_corners=False).clamp(0, 1)
        return frames.view(B, T, 3, H, W)
