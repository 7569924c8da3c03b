"""The official X-NeMo sampling loop (x-nemo-inference@acaa1d0 Pose2VideoPipeline.__call__) on a REDUCED official
model with README-recipe deterministic weights, on 41 real frames, recording the noise (torch.randn_like) and the
window offsets (random.randint) it draws. Reduced: SD-layout U-Nets at block_out_channels (32, 64), 1 layer per
block, cross_attention_dim 32 (the official UNet2DConditionModel / UNet3DConditionModel classes with the inference
YAML's unet_additional_kwargs), CLIP ViT 2 layers width 32 (projection 32), a 3-level AutoencoderKLTemporalDecoder
(32 channels), 32x32 output (8x8 latents), 3 DDIM steps. Motion encoder: a NAMED STAND-IN, portraitlab's conv
MotionEncoder (lit_models/xnemo/motion_encoder.py, imported from the worktree) + its sin-cos table, 4 tokens x 16,
because the official FAN_SA takes 136 s per 24-frame window on this CPU (the FAN is checked on its own golden)."""
import random, sys, types, importlib.machinery
import numpy as np
OFF = "/work/scratch/official/x-nemo-inference"
WT = "/work/wt/xnemo"
sys.path.insert(0, OFF)
_d = types.ModuleType("decord"); _d.VideoReader = None; _d.__spec__ = importlib.machinery.ModuleSpec("decord", None)
sys.modules["decord"] = _d
import torch
from omegaconf import OmegaConf
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
from diffusers import DDIMScheduler, AutoencoderKLTemporalDecoder
from src.models.unet_2d_condition import UNet2DConditionModel
from src.models.unet_3d import UNet3DConditionModel
import src.pipelines.pipeline_pose2vid_motenc_long as P
from det import det_state_dict
import importlib.util
def _load(name, rel):              # one file of portraitlab, without its package (which needs lightning)
    spec = importlib.util.spec_from_file_location(name, f"{WT}/{rel}")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod
MotionEncoder = _load("pl_motion_encoder", "lit_models/xnemo/motion_encoder.py").MotionEncoder
sincos_1d = _load("pl_fan", "lit_models/xnemo/fan.py").sincos_1d
torch.set_num_threads(2)
mode, out_path, crops_npz = sys.argv[1:4]
N, STEPS = 41, 3
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
D2 = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
D3 = dict(down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
          mid_block_type="UNetMidBlock3DCrossAttn")
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
            patch_size=32, projection_dim=32)
VAE = dict(block_out_channels=[32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 3, layers_per_block=1,
           latent_channels=4, in_channels=3, out_channels=3, scaling_factor=0.18215)
MOTENC = dict(motion_dim=64, channels=[8, 16], resolution=32, pool="flatten")
infer = OmegaConf.load(f"{OFF}/configs/inference/inference_xnemo_stage2.yaml")
add = OmegaConf.to_container(infer.unet_additional_kwargs)

class StandInMotionEncoder(torch.nn.Module):
    """Official call layout: x (b,3,f,224,224) or (b,3,224,224) in [-1,1], bbox -> (b,f,L,16) or (b,L,16)."""
    def __init__(self):
        super().__init__()
        self.enc = MotionEncoder(MOTENC["motion_dim"], MOTENC["channels"], MOTENC["resolution"], MOTENC["pool"])
        self.register_buffer("pe", sincos_1d(16, torch.arange(MOTENC["motion_dim"] // 16)).float()[None], persistent=False)
    @property
    def dtype(self):
        return torch.float32
    def forward(self, x, bbox):
        five = x.ndim == 5
        rows = x.permute(0, 2, 1, 3, 4).flatten(0, 1) if five else x
        m = self.enc((rows + 1) / 2).view(rows.shape[0], -1, 16) + self.pe
        return m.view(x.shape[0], x.shape[2], -1, 16) if five else m

torch.manual_seed(0)
ref_unet = UNet2DConditionModel(**UNET, **D2).eval()
den_unet = UNet3DConditionModel(**UNET, **D3, **add).eval()
clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP)).eval()
vae = AutoencoderKLTemporalDecoder(**VAE).eval()
mot = StandInMotionEncoder().eval()
sds = {"reference_unet": det_state_dict(ref_unet), "denoising_unet": det_state_dict(den_unet),
       "image_encoder": det_state_dict(clip), "vae": det_state_dict(vae), "motion_encoder": det_state_dict(mot.enc, "motion_encoder.")}
ref_unet.load_state_dict(sds["reference_unet"], strict=True)
den_unet.load_state_dict(sds["denoising_unet"], strict=True)
clip.load_state_dict(sds["image_encoder"], strict=True)
vae.load_state_dict(sds["vae"], strict=True)
mot.enc.load_state_dict(sds["motion_encoder"], strict=True)
sched = DDIMScheduler(**OmegaConf.to_container(infer.noise_scheduler_kwargs))
pipe = P.Pose2VideoPipeline(vae=vae, image_encoder=clip, reference_unet=ref_unet, denoising_unet=den_unet,
                            motion_encoder=mot, scheduler=sched)
# inputs: the official crops of crops_single_face.npz's clip are re-made here from its stored boxes? No: the caller
# passes the uint8 crops (the official ones, made by make_crops.py on the same detections) for frames 0..N-1.
g = np.load(crops_npz)
pose_images = [Image.fromarray(c) for c in g["all_motion_crops"][:N]]
ref_pose = Image.fromarray(g["reference_pose_crop"])
ref_img = Image.fromarray(g["reference_crop_pre"])
rec = {"noise": [], "offsets": []}
_randn_like, _randint = torch.randn_like, random.randint
def randn_like(x, *a, **k):
    y = _randn_like(x, *a, **k); rec["noise"].append(y.clone()); return y
def randint(a, b):
    v = _randint(a, b); rec["offsets"].append(v); return v
torch.manual_seed(42); random.seed(42)
P.torch.randn_like, P.random.randint = randn_like, randint
with torch.no_grad():
    video = pipe(ref_img, pose_images, ref_pose, 32, 32, N, num_inference_steps=STEPS, guidance_scale=2.5,
                 generator=torch.manual_seed(42), mot_bbox_param=torch.tensor([[0.0, 0.0, 1.0]] * N),
                 context_frames=24, context_overlap=4).videos
P.torch.randn_like, P.random.randint = _randn_like, _randint
res = {"video": video, "noise": rec["noise"][0], "offsets": rec["offsets"], "steps": STEPS, "num_frames": N,
       "configs": {"unet": UNET, "down_up_2d": D2, "clip": CLIP, "vae": VAE, "motion_encoder_standin": MOTENC},
       "key_orders": {k: list(v) for k, v in sds.items()}, "shapes": {k: {n: list(t.shape) for n, t in v.items()} for k, v in sds.items()}, "pe": {n: t.clone() for n, t in sds["denoising_unet"].items() if n.endswith(".pe")},
       "checksums": {k: {n: float(t.double().sum()) for n, t in v.items() if t.is_floating_point()} for k, v in sds.items()}}
if mode == "make":
    torch.save(res, out_path)
    print("made", tuple(video.shape), res["offsets"], float(video.std()), float(video.mean()))
else:
    gold = torch.load(out_path, weights_only=False)
    print("check", float((gold["video"] - video).abs().max()), gold["offsets"] == res["offsets"])
