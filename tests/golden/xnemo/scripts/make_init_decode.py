"""Official X-NeMo initial latents and SVD decode (x-nemo-inference@acaa1d0, Pose2VideoPipeline):
- initial latents: ref latents repeated over T frames -> Pose2VideoPipeline.downgrade_input (GaussianBlur 9, sigma 18)
  -> per-frame scheduler.add_noise(., noise, timesteps[:1]) with DDIMScheduler(inference yaml kwargs), 35 steps;
- decode: Pose2VideoPipeline.decode_latents_svd(latents, decode_chunk_size=25) on a SMALL AutoencoderKLTemporalDecoder
  (block_out_channels [32, 32], layers_per_block 1; not SVD-xt's size) with README-recipe deterministic weights."""
import sys, types
import torch
from omegaconf import OmegaConf
OFF = "/work/scratch/official/x-nemo-inference"
sys.path.insert(0, OFF)
from diffusers import DDIMScheduler, AutoencoderKLTemporalDecoder
from src.pipelines.pipeline_pose2vid_motenc_long import Pose2VideoPipeline
from det import det_state_dict
torch.set_num_threads(2)
mode, path = sys.argv[1], sys.argv[2]
g = torch.Generator().manual_seed(4321)
# ---- initial latents
T = 30
ref_latents = torch.randn(1, 4, 8, 8, generator=g)
noise = torch.randn(1, 4, T, 8, 8, generator=g)
kw = OmegaConf.to_container(OmegaConf.load(f"{OFF}/configs/inference/inference_xnemo_stage2.yaml").noise_scheduler_kwargs)
sched = DDIMScheduler(**kw)
sched.set_timesteps(35)
timesteps = sched.timesteps
dummy = types.SimpleNamespace()
repeated = ref_latents.unsqueeze(2).repeat(1, 1, T, 1, 1)
repeated = Pose2VideoPipeline.downgrade_input(dummy, repeated, torch.Generator().manual_seed(0), "cpu", repeated.dtype)
init = torch.cat([sched.add_noise(repeated[:, :, i:i+1], noise[:, :, i:i+1], timesteps[:1]) for i in range(T)], dim=2)
# ---- decode
cfg = dict(block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D"] * 2, layers_per_block=1,
           latent_channels=4, in_channels=3, out_channels=3, scaling_factor=0.18215)
vae = AutoencoderKLTemporalDecoder(**cfg).eval()
sd = det_state_dict(vae)
vae.load_state_dict(sd, strict=True)
lat = torch.randn(1, 4, T, 8, 8, generator=g) * 0.18215 * 2
with torch.no_grad():
    video = Pose2VideoPipeline.decode_latents_svd(types.SimpleNamespace(vae=vae), lat, decode_chunk_size=25)
video = torch.from_numpy(video)
if mode == "make":
    torch.save({"scheduler_kwargs": kw, "timesteps": timesteps, "ref_latents": ref_latents, "noise": noise,
                "init_latents": init, "vae_config": cfg, "vae_key_order": list(sd), "decode_latents": lat,
                "decode_video": video,
                "vae_checksums": {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in sd.items()}}, path)
    print("made", init.shape, video.shape, float(video.std()), timesteps[:3])
else:
    gold = torch.load(path, weights_only=False)
    print("check", float((gold["init_latents"] - init).abs().max()), float((gold["decode_video"] - video).abs().max()))
