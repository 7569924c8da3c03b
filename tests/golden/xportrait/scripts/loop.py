"""The official X-Portrait sampling loop (DDIMSampler_ReferenceOnly.sample with num_overlap=4, batch_size=16, as
core/test_xportrait.py's visualize_mm calls it) on the reduced official model (../shared/fixtures/official/xportrait:
reduced_config.yaml + reduced_state_dict.pt), CPU fp32, with injected x_T and window offsets. Writes loop_official.pt.
Shims (driver only; official files untouched): stubs pytorch_lightning (LightningModule = nn.Module,
rank_zero_only = identity), open_clip, xformers (memory_efficient_attention = explicit softmax bmm, the fixture
README's substitution; motion modules' `xformers` bound to it); torch.Tensor.cuda -> identity;
DDIMSampler_ReferenceOnly.register_buffer keeps CPU tensors; random.randint -> the injected offsets in order."""
import random, sys, types
import torch
import torch.nn as nn

sys.path[:0] = ["/work/scratch/xportrait_golden/pylib", "/work/scratch/official/X-Portrait"]
FIX = "/work/shared/fixtures/official/xportrait"
pl = types.ModuleType("pytorch_lightning"); pl.LightningModule = nn.Module
pl.utilities = types.ModuleType("pytorch_lightning.utilities")
pl.utilities.distributed = types.SimpleNamespace(rank_zero_only=lambda f: f)
pl.utilities.rank_zero = types.SimpleNamespace(rank_zero_only=lambda f: f)
sys.modules.update({"pytorch_lightning": pl, "pytorch_lightning.utilities": pl.utilities,
                    "pytorch_lightning.utilities.distributed": pl.utilities.distributed,
                    "pytorch_lightning.utilities.rank_zero": pl.utilities.rank_zero,
                    "open_clip": types.ModuleType("open_clip")})


def mea(q, k, v, attn_bias=None, op=None):
    return torch.bmm(torch.softmax(torch.bmm(q.float(), k.float().transpose(1, 2)) * q.shape[-1] ** -0.5, -1),
                     v.float()).to(q.dtype)


import diffusers  # noqa: E402,F401  (before the stub, as the fixture recipe)
xf = types.ModuleType("xformers"); xf.ops = types.ModuleType("xformers.ops"); xf.ops.memory_efficient_attention = mea
xf.ops.MemoryEfficientAttentionFlashAttentionOp = None
sys.modules.update({"xformers": xf, "xformers.ops": xf.ops})
torch.Tensor.cuda = lambda self, *a, **k: self

from omegaconf import OmegaConf  # noqa: E402
from model_lib.ControlNet.ldm.util import instantiate_from_config  # noqa: E402
from model_lib.ControlNet.ldm.models.diffusion import ddim as D  # noqa: E402
import model_lib.ControlNet.ldm.modules.diffusionmodules.openaimodel as OM  # noqa: E402,F401

for mod in list(sys.modules.values()):
    if getattr(mod, "__name__", "").startswith("model_lib") and hasattr(mod, "xformers"):
        mod.xformers = xf
D.DDIMSampler_ReferenceOnly.register_buffer = lambda self, name, attr: setattr(self, name, attr)

torch.manual_seed(123)
model = instantiate_from_config(OmegaConf.load(f"{FIX}/reduced_config.yaml").model).cpu().eval()
sd = torch.load(f"{FIX}/reduced_state_dict.pt", weights_only=True)
missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
assert not unexpected and all("input_hint_block" in k for k in missing), (missing[:3], unexpected[:3])
model.device = torch.device("cpu")
io = torch.load(f"{FIX}/reduced_io.pt", weights_only=True)
ctx_row = io["inputs"]["context"][:1]                     # the fixture's CLIP("") stand-in, 1×77×32

N, STEPS, SCALE, H = int(sys.argv[2]), int(sys.argv[3]), 5.0, 8
g = torch.Generator().manual_seed(7)
z_ref = torch.randn(1, 4, H, H, generator=g).repeat(N, 1, 1, 1) + 0.1 * torch.randn(N, 4, H, H, generator=g)
noise = torch.randn(N, 4, H, H, generator=g)
driving8 = torch.randint(0, 256, (N, 3, 8 * H, 8 * H), generator=g, dtype=torch.uint8)  # stored exactly
driving = driving8.float() / 255                            # [0, 1]; the pose hint is driving * 2 - 1
centres = torch.stack([torch.tensor([[20, 22], [44, 22], [32, 46]]) + torch.randint(-3, 4, (3, 2), generator=g)
                       for _ in range(N)])                   # patch centres (x, y) in pixels of the 64² frame
offsets = [int(o) for o in torch.randint(0, N, (STEPS,), generator=g)]
pose = driving * 2 - 1
local = torch.full_like(pose, -1.0)
h = 8 * H // 8                                              # official half_size = target_res // 8
for i in range(N):
    for x, y in centres[i].tolist():
        local[i, :, y - h:y + h, x - h:x + h] = pose[i, :, y - h:y + h, x - h:x + h]
x_T = model.q_sample(x_start=z_ref, t=torch.tensor([999]), noise=noise)
ctx = ctx_row.expand(N, -1, -1)
c = {"c_crossattn": [ctx], "image_control": [z_ref], "c_concat": [pose], "local_c_concat": [local], "wonoise": True}
uc = {"c_crossattn": [ctx], "c_concat": [torch.zeros_like(pose)], "local_c_concat": [torch.zeros_like(local)],
      "wonoise": True}
it = iter(offsets)
random.randint = lambda a, b: next(it)
with torch.no_grad():
    out, _ = model.sample_log(cond=c, batch_size=16, ddim=True, ddim_steps=STEPS, eta=0.0,
                              unconditional_guidance_scale=SCALE, unconditional_conditioning=uc, inpaint=None,
                              x_T=x_T, num_overlap=4)
torch.save({"z_ref": z_ref, "noise": noise, "driving_u8": driving8, "patch_centres": centres.float(), "offsets": offsets,
            "context": ctx_row, "x_T": x_T, "latents": out, "steps": STEPS, "guidance_scale": SCALE}, sys.argv[1])
print("saved", out.shape, float(out.abs().max()), offsets)
