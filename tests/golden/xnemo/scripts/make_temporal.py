"""Golden I/O of one official X-NeMo temporal module (x-nemo-inference@acaa1d0):
get_motion_module(320, "Vanilla", inference_xnemo_stage2.yaml temporal_module_kwargs) = Temporal_Self x2, sin-cos PE
max_len 32, the module at denoising_unet.down_blocks.0.temporal_modules.0; deterministic weights (README recipe,
prefix 'down_blocks.0.temporal_modules.0.'); input frames with different statistics (per-frame scale and shift)."""
import sys
import torch
from omegaconf import OmegaConf
OFF = "/work/scratch/official/x-nemo-inference"
sys.path.insert(0, OFF)
from src.models.motion_module import get_motion_module
from det import det_state_dict
torch.set_num_threads(2)
mode, path = sys.argv[1], sys.argv[2]
kw = OmegaConf.to_container(OmegaConf.load(f"{OFF}/configs/inference/inference_xnemo_stage2.yaml").unet_additional_kwargs.temporal_module_kwargs)
mm = get_motion_module(320, "Vanilla", kw).eval()
prefix = "down_blocks.0.temporal_modules.0."
sd = det_state_dict(mm, prefix)
mm.load_state_dict(sd, strict=True)
g = torch.Generator().manual_seed(1234)
F, H, W = 5, 8, 6
x = torch.randn(1, 320, F, H, W, generator=g)
scale = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5]).view(1, 1, F, 1, 1)
shift = torch.tensor([-2.0, 0.0, 1.0, 3.0, -0.5]).view(1, 1, F, 1, 1)
x = x * scale + shift
with torch.no_grad():
    y = mm(x, None, encoder_hidden_states=None)
if mode == "make":
    torch.save({"inputs": {"hidden_states": x}, "outputs": {"hidden_states": y},
                "unet_prefix": prefix, "key_order": list(sd),
                "pe": sd["temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"].clone(),
                "state_dict_checksums": {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in sd.items()},
                "temporal_module_kwargs": kw}, path)
    print("made", tuple(y.shape), float(y.abs().max()))
else:
    gold = torch.load(path, weights_only=False)
    print("check max abs diff", float((gold["outputs"]["hidden_states"] - y).abs().max()),
          "input equal", torch.equal(gold["inputs"]["hidden_states"], x))
