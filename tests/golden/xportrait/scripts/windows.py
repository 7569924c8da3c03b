"""Run the official DDIMSampler_ReferenceOnly.ddim_sampling window loop (X-Portrait @ be4d60b, unmodified file)
with a recording p_sample_ddim, for N frames and every offset; writes windows_official.json.
Shims (in this driver only): torch.Tensor.cuda -> identity (the loop's `counts = torch.zeros(N).cuda()`),
random.randint patched to return the chosen offset, pred_x_prev_from_eps returns (eps, eps) so the loop's
averaged model output comes back as the sample."""
import json, random, sys, types
import numpy as np
import torch
sys.path.insert(0, "/work/scratch/official/X-Portrait")
torch.Tensor.cuda = lambda self, *a, **k: self
sys.modules["einops"] = types.SimpleNamespace(repeat=None, rearrange=None)     # import-only stub
from model_lib.ControlNet.ldm.models.diffusion import ddim as D

out = {"source": "bytedance/X-Portrait@be4d60b model_lib/ControlNet/ldm/models/diffusion/ddim.py "
       "DDIMSampler_ReferenceOnly.ddim_sampling", "window_size": 16, "num_overlap": 4, "cases": {}}
for N in (10, 16, 41, 100):
    case = {}
    for offset in range(N):
        s = D.DDIMSampler_ReferenceOnly.__new__(D.DDIMSampler_ReferenceOnly)
        s.model = types.SimpleNamespace(betas=torch.zeros(1))
        s.ddim_timesteps = np.array([1])
        s.ddpm_num_timesteps = 1000
        rec = []
        def p_sample_ddim(x, c, t, unconditional_guidance_scale=1., unconditional_conditioning=None, inpaint=None,
                          _rec=rec):
            w = len(_rec)
            # model output of window w at position j: 1000 * (w + 1) + j  (which write survives a duplicate index)
            _rec.append(None)
            return (1000.0 * (w + 1) + torch.arange(x.shape[0], dtype=torch.float64)).view(-1, 1, 1, 1).expand_as(x).clone()
        s.p_sample_ddim = p_sample_ddim
        s.pred_x_prev_from_eps = lambda img, cond, ts, model_output, **kw: (model_output, model_output)
        real_randint = random.randint
        random.randint = lambda a, b, _o=offset: (_o if (a, b) == (0, N - 1) else real_randint(a, b))
        img = torch.zeros(N, 1, 1, 1, dtype=torch.float64)
        sel = []
        cond = {"c_concat": [torch.arange(N, dtype=torch.float64)[:, None]]}
        unc = {"c_concat": [torch.arange(N, dtype=torch.float64)[:, None]]}
        def p_sample_rec(x, c, t, unconditional_guidance_scale=1., unconditional_conditioning=None, inpaint=None):
            sel.append(c["c_concat"][0][:, 0].long().tolist())        # the window's frame indices, as selected
            return p_sample_ddim(x, c, t)
        s.p_sample_ddim = p_sample_rec
        try:
            res, _ = s.ddim_sampling(cond, (16, 1, 1, 1), x_T=img, unconditional_conditioning=unc, num_overlap=4)
        finally:
            random.randint = real_randint
        case[str(offset)] = {"windows": sel, "average": res.flatten().tolist()}
    out["cases"][str(N)] = case
json.dump(out, open(sys.argv[1], "w"))
print({N: len(c["0"]["windows"]) for N, c in out["cases"].items()})
