"""Capture outputs of the FOMM blocks' two conventions from the repo at its current commit (run from the worktree root).
Writes a .pt with, per case: the model's state dict (fp16 storage), inputs, outputs."""
import sys, torch
from omegaconf import OmegaConf
sys.path.insert(0, ".")
from experiments.compose import compose
from lit_models.mrfa import MRFA
torch.set_num_threads(1)
base = compose("train", ["model=mrfa_tiny"]).model
CASES = {
    "mtia": dict(),
    "fomm": dict(prior="fomm", kp={"block_expansion": 8, "max_features": 32, "num_blocks": 2}),
    "tps": dict(prior="tps", num_kp=3, kp={"tps_backbone": "conv", "block_expansion": 8}, use_bg_motion=True, lambda_bg=10.0),
}
out = {}
for name, over in CASES.items():
    c = OmegaConf.merge(base, {"resolution": 32, "generator": {"num_up_blocks": 4}, "refine_iters": 2,
                               "lambda_perceptual": 0.0}, over)
    torch.manual_seed(0)
    m = MRFA(c).eval()
    sd = m.state_dict()
    init_sums = {k: v.double().sum().item() for k, v in sd.items() if v.is_floating_point()}
    g = torch.Generator().manual_seed(1)
    src, drv = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        kp_s, kp_d = m.encoder(src), m.encoder(drv)
        bg = m.bg_predictor(src, drv) if m.bg_predictor is not None else None
        tr = {}
        o = m.generate(src, kp_s, kp_d, bg, trace=tr)
    res = {"kp_source": kp_s["value"], "prediction": o["prediction"], "prior_deformation": o["prior_deformation"],
           "prior_occlusion": o["prior_occlusion"], "deformation": o["deformation"]}
    if "jacobian" in kp_s:
        res["kp_source_jacobian"] = kp_s["jacobian"]
    if bg is not None:
        res["bg_param"] = bg
    res.update({k: v for k, v in tr.items() if k.startswith("dense_motion.")})
    m.train()
    torch.manual_seed(2)
    losses = m.compute_losses({"source": src, "driving": drv[:, None]})
    res.update({k: v.detach() for k, v in losses.items()})
    out[name] = {"overrides": over, "state_dict_keys": list(sd),
                 "state_dict_sum": init_sums,
                 "inputs": {"source": src, "driving": drv}, "outputs": res}
    print(name, sum(v.numel() for v in sd.values()), {k: tuple(v.shape) for k, v in res.items()})
torch.save(out, sys.argv[1])
