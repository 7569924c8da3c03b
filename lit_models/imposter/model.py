"""ImPoster (Kothandaraman et al., "ImPoster: Text and Frequency Guidance for Subject Driven Action
Personalization using Diffusion Models", 2024).

Training (per pair): ``L = λ_source·E‖ε − ε_θ(z_t^S, t, τ(c_S))‖² + λ_driving·E‖ε − ε_θ(z_t^D, t, τ(c_D))‖²`` on
the source image S with its caption c_S and the driving image D with c_D, the same ε and t for both
(``shared_noise``, as released). ``finetune``: ``full`` (default, as released: every U-Net weight, lr 2e-6),
``lora`` (peft LoRA adapters only; :meth:`ImPoster.save_adapter` writes them with peft's ``save_pretrained``) or
``full_lora`` (the released code's parameter set: LoRA adapters and the whole U-Net).

Sampling (DDIM): the first K = ``driving_prompt_steps`` steps (released: 6) are conditioned on c_D, the rest on the
target prompt c_T; after every step the latent takes an explicit gradient step of frequency guidance

    z_{t-1} <- z_{t-1} - η g / rms(g),   g = ∇_z [ w_φ L_phase(x̂_0(z), z^D) + w_A L_amp(x̂_0(z), z^S) ],
    x̂_0(z) = (z - sqrt(1-ᾱ_{t-1}) ε̂) / sqrt(ᾱ_{t-1})   (ε̂ from the step's prediction, held fixed)

(``use_freq_grad_norm=false``: the raw gradient ``η g``), so, unlike the published code (which computes the loss
without gradients and detaches it), the latent moves.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from lit_models.base import AnimationModule
from lit_models.imposter.backbone import build_backbone
from lit_models.imposter.config import Finetune
from lit_models.imposter.frequency import frequency_guidance_loss
from toolbox.choices import as_choice


class ImPoster(AnimationModule):
    def __init__(self, cfg):
        super().__init__(cfg)
        from diffusers import DDPMScheduler

        bb = build_backbone(self.cfg)
        self.unet, self.text_encoder, self.vae, self.tokenizer = bb.unet, bb.text_encoder, bb.vae, bb.tokenizer
        self.latent_channels, self.vae_scale, self.scaling_factor = bb.latent_channels, bb.vae_scale, bb.scaling_factor
        self.text_encoder.requires_grad_(False).eval()
        if self.vae is not None:
            self.vae.requires_grad_(False).eval()
        mode = as_choice(Finetune, self.cfg.finetune, "model.finetune")
        self.unet.requires_grad_(mode != "lora")
        if mode in ("lora", "full_lora"):
            from peft import LoraConfig, get_peft_model

            # a peft PeftModel around the U-Net (same call signature), so the adapters save with save_pretrained
            self.unet = get_peft_model(self.unet, LoraConfig(
                r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha, init_lora_weights="gaussian",
                target_modules=list(self.cfg.lora_target_modules)))
            if mode == "full_lora":
                self.unet.requires_grad_(True)   # get_peft_model froze the base weights
        sched = dict(bb.scheduler_config)
        if self.cfg.backbone == "random_init":
            sched.setdefault("clip_sample", not self.cfg.use_vae)
        self.scheduler_config = sched
        self.noise_scheduler = DDPMScheduler.from_config(sched)
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False)

    def save_adapter(self, path: str | Path) -> Path:
        """``finetune=lora``: the personalized LoRA through peft's ``PeftModel.save_pretrained`` (adapter_config.json +
        adapter_model.safetensors); ``PeftModel.from_pretrained(base_unet, path)`` restores it on the base U-Net."""
        if self.cfg.finetune != "lora":
            raise ValueError(f"save_adapter needs model.finetune=lora (got {self.cfg.finetune!r}: the U-Net itself "
                             "was trained, an adapter alone does not reproduce it)")
        path = Path(path)
        self.unet.save_pretrained(str(path))
        return path

    # ---- frozen parts stay in eval mode ----------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()
        if self.vae is not None:
            self.vae.eval()
        return self

    # ---- encoders --------------------------------------------------------------------------------------------
    @property
    def latent_size(self) -> int:
        return self.cfg.resolution // self.vae_scale

    def _fit(self, img: torch.Tensor) -> torch.Tensor:
        r = self.cfg.resolution
        if img.shape[-2:] != (r, r):
            img = F.interpolate(img, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return img

    def encode_images(self, img: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """[0, 1] images B×3×H×W -> latents z (VAE: E(2x-1)·scaling_factor; pixel space: 2x-1)."""
        x = self._fit(img).to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            return x
        dist = self.vae.encode(x).latent_dist
        return (dist.sample() if sample else dist.mode()) * self.scaling_factor

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        x = z if self.vae is None else self.vae.decode(z / self.scaling_factor).sample
        return ((x + 1) / 2).clamp(0, 1)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(self.device))[0]

    def _captions(self, batch: dict, key: str, default: str, n: int) -> list[str]:
        caps = batch.get(key)
        if caps is None:
            return [default] * n
        caps = [caps] * n if isinstance(caps, str) else list(caps)
        if len(caps) != n:
            raise ValueError(f"batch[{key!r}] has {len(caps)} captions for {n} images")
        return caps

    # ---- training --------------------------------------------------------------------------------------------
    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        src = batch["source"]
        drv = batch["driving"][:, 0] if batch["driving"].dim() == 5 else batch["driving"]
        B = src.shape[0]
        items = []
        if self.use_loss("source"):
            items.append(("source", src, self._captions(batch, "caption_source", self.cfg.source_caption, B)))
        if self.use_loss("driving"):
            items.append(("driving", drv, self._captions(batch, "caption_driving", self.cfg.driving_caption, B)))
        if not items:
            return {}
        imgs = torch.cat([i[1] for i in items])
        caps = [c for i in items for c in i[2]]
        with torch.no_grad():
            z0 = self.encode_images(imgs, sample=True)
            emb = self.encode_prompts(caps)
        T = self.noise_scheduler.config.num_train_timesteps
        if self.cfg.shared_noise:  # released: one ε and one t per step, used for the source and the driving image
            noise = torch.randn_like(z0[:B]).repeat(len(items), 1, 1, 1)
            t = torch.randint(0, T, (B,), device=z0.device).repeat(len(items))
        else:
            noise = torch.randn_like(z0)
            t = torch.randint(0, T, (z0.shape[0],), device=z0.device)
        zt = self.noise_scheduler.add_noise(z0, noise, t)
        pred = self.unet(zt, t, encoder_hidden_states=emb).sample
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        elif self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(z0, noise, t)
        else:
            raise ValueError(f"unsupported prediction_type {self.noise_scheduler.config.prediction_type!r}")
        per = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        return {f"loss_{name}": chunk.mean() for (name, _, _), chunk in zip(items, per.split(B))}

    # ---- sampling --------------------------------------------------------------------------------------------
    def _eps(self, z, t, emb, uncond, cfg_scale):
        if cfg_scale == 1.0:
            return self.unet(z, t, encoder_hidden_states=emb).sample
        out = self.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, emb])).sample
        e_u, e_c = out.chunk(2)
        return e_u + cfg_scale * (e_c - e_u)

    def frequency_guidance(self, z: torch.Tensor, eps_hat: torch.Tensor, alpha_prev: float, z_driving: torch.Tensor,
                           z_source: torch.Tensor, step_size: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One explicit gradient step of the frequency losses w.r.t. the latent z (works under no_grad/inference)."""
        with torch.inference_mode(False), torch.enable_grad():
            z_ = z.detach().clone().requires_grad_(True)
            eps = eps_hat.detach().clone()
            x0 = (z_ - math.sqrt(1 - alpha_prev) * eps) / math.sqrt(alpha_prev)
            loss, parts = frequency_guidance_loss(x0, z_driving.detach().clone(), z_source.detach().clone(),
                                                  self.cfg.freq_phase_weight, self.cfg.freq_amp_weight)
            if not parts:
                return z, {}
            (grad,) = torch.autograd.grad(loss.sum(), z_)
            if self.cfg.use_freq_grad_norm:
                grad = grad / grad.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        return (z_ - step_size * grad).detach(), {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def sample(self, source: torch.Tensor, driving: torch.Tensor, target_prompts: Sequence[str] | None = None,
               driving_prompts: Sequence[str] | None = None, noise: torch.Tensor | None = None,
               freq_guidance_scale: float | None = None, num_inference_steps: int | None = None,
               return_trace: bool = False):
        """Generate B images of the source subject doing the driving action. source, driving: B×3×H×W in [0, 1]."""
        from diffusers import DDIMScheduler

        B = source.shape[0]
        target_prompts = list(target_prompts or [self.cfg.target_prompt] * B)
        driving_prompts = list(driving_prompts or [self.cfg.driving_caption] * B)
        scale = self.cfg.freq_guidance_scale if freq_guidance_scale is None else float(freq_guidance_scale)
        n = num_inference_steps or self.cfg.num_inference_steps
        sampler = DDIMScheduler.from_config(self.scheduler_config)
        sampler.set_timesteps(n, device=self.device)
        z_src, z_drv = self.encode_images(source), self.encode_images(driving)
        emb_drv, emb_tgt = self.encode_prompts(driving_prompts), self.encode_prompts(target_prompts)
        uncond = self.encode_prompts([""] * B) if self.cfg.cfg_scale != 1.0 else None
        if noise is None:
            g = torch.Generator(device="cpu").manual_seed(self.cfg.sample_seed)
            noise = torch.randn((B, self.latent_channels, self.latent_size, self.latent_size), generator=g)
        z = noise.to(self.device, torch.float32) * sampler.init_noise_sigma
        guided_steps = int(round(self.cfg.freq_guidance_until * n))
        trace = []
        for i, t in enumerate(sampler.timesteps):
            emb = emb_drv if i < self.cfg.driving_prompt_steps else emb_tgt
            model_out = self._eps(sampler.scale_model_input(z, t), t, emb, uncond, self.cfg.cfg_scale)
            out = sampler.step(model_out, t, z, eta=self.cfg.eta)
            if scale > 0 and i < guided_steps:
                a_t = float(self.alphas_cumprod[t])
                eps_hat = (z - math.sqrt(a_t) * out.pred_original_sample) / math.sqrt(1 - a_t)
                prev_t = int(t) - sampler.config.num_train_timesteps // n
                a_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else float(sampler.final_alpha_cumprod)
                z_new, parts = self.frequency_guidance(out.prev_sample, eps_hat, a_prev, z_drv, z_src, scale)
                if return_trace:
                    trace.append({"step": i, "t": int(t), **{k: float(v.mean()) for k, v in parts.items()},
                                  "moved": float((z_new - out.prev_sample).abs().mean())})
                z = z_new
            else:
                z = out.prev_sample
        img = self.decode_latents(z)
        return (img, trace) if return_trace else img

    def animate(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        """Every driving frame becomes one ImPoster sample (driving phase, source amplitude, config prompts)."""
        B, T, _, H, W = driving.shape
        src = source[:, None].expand(-1, T, -1, -1, -1).reshape(B * T, *source.shape[1:])
        out = self.sample(src, driving.reshape(B * T, *driving.shape[2:]))
        if out.shape[-2:] != (H, W):
            out = F.interpolate(out, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
        return out.view(B, T, 3, H, W).to(driving.dtype)
