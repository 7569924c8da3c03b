"""X-NeMo's sampling pipeline (``lit_models.xnemo.pipeline``): the whole clip in one trajectory with the official
window schedule, noise and offsets from one injectable generator, official guidance, chunked decoding; the SVD-xt
temporal VAE as the default decoder of ``model=xnemo``."""
from __future__ import annotations

import pytest
import torch

from helpers import random_clip
from lit_models.registry import build_model

SHRINK = ["model.resolution=32", "model.unet.sample_size=8", "model.motion_encoder_resolution=16",
          "model.motion_encoder_channels=[8,16]"]
OFFICIAL = ["model=xnemo_tiny", *SHRINK, "sampling=xnemo_official", "model.num_inference_steps=2"]


@pytest.fixture(scope="module")
def official_tiny():
    """The tiny X-NeMo with the official sampling preset (24-frame uniform windows, overlap 4, offsets in [0, 24),
    blurred-reference start, guidance 2.5 on the reference's own motion), 2 steps."""
    from experiments.compose import compose

    torch.manual_seed(0)
    return build_model(compose("train", OFFICIAL).model).eval()


def _clip(T, seed=0, same_frames=False):
    """A 32² (source, T-frame driving) pair; ``same_frames``: one driving frame repeated T times."""
    d = random_clip(T=1 if same_frames else T, seed=seed, size=32)
    return d["source"], d["driving"].expand(1, T, 3, 32, 32).contiguous()


def test_reproducible_with_a_fixed_generator_and_seeded_by_default(official_tiny):
    src, drv = _clip(6)
    a = official_tiny.animate(src, drv, generator=torch.Generator().manual_seed(7))
    b = official_tiny.animate(src, drv, generator=torch.Generator().manual_seed(7))
    c = official_tiny.animate(src, drv, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3
    default = official_tiny.animate(src, drv)
    seeded = official_tiny.animate(src, drv, generator=torch.Generator().manual_seed(int(official_tiny.cfg.sample_seed)))
    assert torch.equal(default, seeded)


def test_injected_noise_and_offsets_replace_the_generator_draws(official_tiny):
    """The generator's draws are, in order, the clip's B×T×C×h×w noise then one offset per step: injecting those
    same values gives the same video."""
    from lit_models.xnemo.pipeline import XNeMoPipeline

    src, drv = _clip(30)
    pipe = XNeMoPipeline(official_tiny)
    a = pipe(src, drv, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn((1, 30, official_tiny.latent_channels, 8, 8), generator=g)
    offsets = [int(torch.randint(0, 24, (), generator=g)) for _ in range(2)]
    assert pipe.last_offsets == offsets
    b = pipe(src, drv, noise=noise, offsets=offsets)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_one_trajectory_noise_does_not_repeat_across_windows(official_tiny):
    """Identical driving frames and zero-initialised temporal/motion modules (frames independent): each output frame
    depends only on its own noise, so with one noise tensor for the clip frames 0, 16, 24 and 32 all differ (one
    seed per 16-frame chunk would make frames 0, 16 and 32 equal)."""
    src, drv = _clip(48, same_frames=True)
    out = official_tiny.animate(src, drv, generator=torch.Generator().manual_seed(0))[0]
    for i, j in [(0, 16), (0, 24), (16, 32), (0, 32)]:
        assert (out[i] - out[j]).abs().mean() > 1e-3, (i, j)


def test_41_frames_run_3_official_windows_per_step_in_one_trajectory(official_tiny, monkeypatch):
    """N = 41: every step runs the official 3 windows of 24 (offset drawn in [0, 24)); with frame-independent
    networks the windowed video equals the video of one-frame windows (frames in two windows get the mean of equal
    predictions), so the averaging is per frame and nothing is dropped or doubled."""
    from lit_models.diffusion.sampling import uniform_windows
    from lit_models.xnemo.pipeline import XNeMoPipeline

    src, drv = _clip(41)
    pipe = XNeMoPipeline(official_tiny)
    windowed = pipe(src, drv, generator=torch.Generator().manual_seed(1))
    assert len(pipe.last_windows) == 2 and all(len(w) == 3 for w in pipe.last_windows)
    for off, wins in zip(pipe.last_offsets, pipe.last_windows):
        assert 0 <= off < 24 and [w.tolist() for w in wins] == [w.tolist() for w in uniform_windows(41, 24, 4, off)]
    monkeypatch.setitem(official_tiny.cfg, "window_size", 1)       # every frame its own window
    monkeypatch.setitem(official_tiny.cfg, "window_overlap", 0)
    single = pipe(src, drv, generator=torch.Generator().manual_seed(1))
    assert all(len(w) == 41 for w in pipe.last_windows)
    torch.testing.assert_close(windowed, single, atol=1e-5, rtol=0)


def test_guidance_is_uncond_plus_scale_times_the_difference(official_tiny):
    """ε = ε_u + s (ε_c − ε_u) with the uncond branch = no reference, zero c_img, the reference's own motion: after
    one DDIM step the latents are affine in s (equal steps in s give equal changes), and the uncond branch matters."""
    from test_xnemo import trained_motion_modules

    src, drv = _clip(4)
    with trained_motion_modules(official_tiny):
        runs = [official_tiny.animate(src, drv, num_inference_steps=1, guidance_scale=s,
                                      generator=torch.Generator().manual_seed(0)) for s in (1.5, 2.5, 3.5)]
    d1, d2 = runs[1] - runs[0], runs[2] - runs[1]
    inside = ((runs[0] > 0.02) & (runs[0] < 0.98) & (runs[2] > 0.02) & (runs[2] < 0.98))   # away from the clamp
    assert d1.abs().max() > 1e-3
    torch.testing.assert_close(d1[inside], d2[inside], atol=1e-4, rtol=0)


def test_reference_motion_is_the_guidance_negative(official_tiny):
    """``reference_motion`` (official: the reference's tight face crop) replaces the source as the image whose
    motion tokens the uncond branch reads."""
    from test_xnemo import trained_motion_modules

    src, drv = _clip(4)
    crop = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(9))
    with trained_motion_modules(official_tiny):
        a = official_tiny.animate(src, drv, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
        b = official_tiny.animate(src, drv, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                                  reference_motion=src)
        c = official_tiny.animate(src, drv, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                                  reference_motion=crop)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-4


def test_runs_where_the_module_was_moved(official_tiny):
    """The pipeline runs on the parameters' dtype/device: the float64 copy gives the float32 video within 1e-4
    (noise still drawn by the CPU generator, so both use the same numbers)."""
    import copy

    src, drv = _clip(5)
    ref = official_tiny.animate(src, drv, generator=torch.Generator().manual_seed(2))
    m64 = copy.deepcopy(official_tiny).double()
    out = m64.animate(src, drv, generator=torch.Generator().manual_seed(2))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, atol=1e-4, rtol=0)


# ---- the decoder: SVD-xt's temporal VAE, the default of model=xnemo ------------------------------------------
def test_default_xnemo_decoder_is_the_svd_xt_temporal_vae_and_names_its_weights(compose_cfg, tmp_path):
    """``model=xnemo`` decodes with ``AutoencoderKLTemporalDecoder`` (``vae_type=temporal_decoder``, chunks of
    25); without the folder the build fails naming the key, the path, the repo and the subfolder."""
    from lit_models.diffusion.networks import LatentCodec, MissingWeightsError

    cfg = compose_cfg("train", ["model=xnemo", f"model.vae_path={tmp_path}/svd/vae"]).model
    assert (cfg.vae_type, cfg.vae_decode_chunk, cfg.latent) == ("temporal_decoder", 25, "vae")
    with pytest.raises(MissingWeightsError, match=r"svd/vae.*vae_path.*stabilityai/stable-video-diffusion-img2vid-xt"
                                                  r".*vae/"):
        LatentCodec(cfg)
    kl = compose_cfg("train", ["model=xnemo", "model.vae_type=kl", f"model.pretrained_model_name_or_path={tmp_path}",
                               "model.vae_path=null"]).model
    with pytest.raises(MissingWeightsError, match="VAE"):
        LatentCodec(kl)                                    # the SD AutoencoderKL, under its own name


def test_full_size_temporal_vae_decodes_25_frame_chunks_as_one_clip(compose_cfg, monkeypatch):
    """Full-size SVD-xt VAE built on the meta device: ``decode_clip`` of 1×41×4×64×64 latents calls the temporal
    decoder on chunks of 25 and 16 frames (``num_frames`` = the chunk) and returns 1×41×3×512×512; encode gives
    1×4×64×64 latents."""
    from diffusers import AutoencoderKLTemporalDecoder

    from lit_models.diffusion import networks

    def meta_vae(path, local_files_only=True):
        with torch.device("meta"):
            vae = AutoencoderKLTemporalDecoder.from_config(networks.SVD_XT_VAE_CONFIG)
        return vae.to("meta")          # its mix factors are made with torch.Tensor([α]), on the CPU

    monkeypatch.setattr(networks, "build_temporal_vae", meta_vae)
    codec = networks.LatentCodec(compose_cfg("train", ["model=xnemo"]).model)
    calls = []
    real = codec.vae.decode
    monkeypatch.setattr(codec.vae, "decode", lambda z, num_frames: calls.append((z.shape[0], num_frames)) or
                        real(z, num_frames=num_frames))
    with torch.device("meta"):                             # the decoder makes its frame indicator on the default device
        out = codec.decode_clip(torch.empty(1, 41, 4, 64, 64))
        z = codec.encode(torch.empty(1, 3, 512, 512))
    assert calls == [(25, 25), (16, 16)] and tuple(out.shape) == (1, 41, 3, 512, 512)
    assert tuple(z.shape) == (1, 4, 64, 64)
    assert codec.channels == 4 and codec.factor == 8


def test_temporal_decoder_mixes_the_frames_of_a_chunk(monkeypatch):
    """A small random ``AutoencoderKLTemporalDecoder`` (not SVD-xt's size; CPU): decoding a chunk as one clip
    differs from decoding its frames one by one (the decoder's temporal layers), and ``vae_decode_chunk`` sets
    which frames are decoded together."""
    from diffusers import AutoencoderKLTemporalDecoder
    from omegaconf import OmegaConf

    from lit_models.diffusion import networks

    small = dict(networks.SVD_XT_VAE_CONFIG, block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                 layers_per_block=1)
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder.from_config(small).eval()
    for name, p in vae.named_parameters():                 # the temporal mixers are zero-ish at init: make them act
        if "time_mixer" in name or "temporal" in name:
            p.data.normal_(0, 0.3)
    monkeypatch.setattr(networks, "build_temporal_vae", lambda path, local_files_only=True: vae)
    cfg = OmegaConf.create({"latent": "vae", "vae_scaling_factor": 0.18215, "pixel_unshuffle": 1,
                            "vae_type": "temporal_decoder", "vae_decode_chunk": 4, "vae_path": None,
                            "local_files_only": True})
    z = torch.randn(1, 6, 4, 8, 8)
    with torch.no_grad():
        chunk4 = networks.LatentCodec(cfg).decode_clip(z)
        cfg.vae_decode_chunk = 1
        single = networks.LatentCodec(cfg).decode_clip(z)
        cfg.vae_decode_chunk = 25
        whole = networks.LatentCodec(cfg).decode_clip(z)
        direct = vae.decode(z[0] / 0.18215, num_frames=6).sample
    assert chunk4.shape == (1, 6, 3, 16, 16)
    torch.testing.assert_close(whole[0], direct)
    assert (chunk4 - single).abs().max() > 1e-4 and (chunk4[:, 4:] - whole[:, 4:]).abs().max() > 1e-4


def test_default_clip_input_is_the_official_pil_resize_and_clip_processor():
    """``image_context``'s default CLIP input equals the official one — PIL ``resize((224, 224))`` of the 512²
    reference then ``transformers.CLIPImageProcessor()`` (``datamodules.preprocess.xnemo.clip_pixels``) — on an
    image of uint8 levels; a torch bicubic resize does not."""
    import numpy as np
    import torch.nn.functional as F

    from datamodules.preprocess.xnemo import clip_pixels as official_clip_pixels
    from datamodules.preprocess.xnemo import to_tensor
    from lit_models.xnemo.model import CLIP_MEAN, CLIP_STD, clip_pixels

    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)     # 512², blocky
    ours, official = clip_pixels(to_tensor(img)[None]), official_clip_pixels(img)
    assert ours.shape == official.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)
    x = F.interpolate(to_tensor(img)[None], size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    torch_way = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert (torch_way - official).abs().max() > 1e-2
