"""Contact-region metrics (l1_contact, ssim_contact, lpips_<net>_contact, contact_rate) in the runner's single pass,
the synthfaces_hands protocol, and model statistics (latent_stats) recorded in metrics.json / the table."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from eval.protocol import load_protocol
from eval.regions import ContactMetric, contact_region, masked_l1, masked_lpips, masked_ssim
from eval.runner import run_evaluation
from lit_models.baselines import CopySource
from lit_models.baselines.config import CopySourceConfig


def test_masked_ssim_matches_torchmetrics_full_image_map():
    """Reference: torchmetrics' SSIM map (return_full_image, reflect-padded, gaussian σ 1.5, 11 taps) averaged over
    the region — the previous lit_models/interanimate implementation."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    region = (torch.rand(3, 1, 32, 32, generator=g) > 0.7).float()
    region[:, :, :2] = 1                                     # include the reflect-padded border
    region[2] = 0                                            # an empty region → NaN
    _, smap = structural_similarity_index_measure(x.double(), y.double(), gaussian_kernel=True, sigma=1.5,
                                                  kernel_size=11, data_range=1.0, reduction="none",
                                                  return_full_image=True)
    m = region.double().expand_as(smap)
    ref = (m * smap).flatten(1).sum(1) / m.flatten(1).sum(1)
    ours = masked_ssim(x, y, region)
    assert torch.allclose(ours[:2].double(), ref[:2], atol=1e-6) and math.isnan(ours[2])
    l1 = masked_l1(x, y, region)
    by_hand = [(x[i] - y[i]).abs()[region[i].expand(3, -1, -1) > 0].mean() for i in range(2)]
    assert torch.allclose(l1[:2], torch.stack(by_hand), atol=1e-6) and math.isnan(l1[2])


class HandsData:
    """Videos whose target carries hand / face masks: a face square, a hand square that moves into it."""

    def __init__(self, n=2, T=4, size=32, with_masks=True):
        self.n, self.T, self.size, self.with_masks = n, T, size, with_masks

    def video(self, i):
        g = torch.Generator().manual_seed(i)
        S, T = self.size, self.T
        frames = torch.rand(T, 3, S, S, generator=g)
        face = torch.zeros(T, 1, S, S)
        face[..., 8:24, 8:24] = 1
        hand = torch.zeros(T, 1, S, S)
        for t in range(T):                               # frame 1 far away (no contact), later frames touching
            x0 = 0 if t <= 1 else 4 + 2 * t
            hand[t, :, 28:32, 0:2] = 1 if t <= 1 else 0
            hand[t, :, 20:26, x0:x0 + 6] = 0 if t <= 1 else 1
        s = {"source": frames[0].clone(), "driving": frames, "target": frames,
             "meta": {"video_id": f"v{i}", "frame_indices": list(range(T))}}
        if self.with_masks:
            s["masks"] = {"hand": hand, "face": face}
        return s

    def eval_dataset(self, split, mode, num_frames, stride, max_videos, pairs_csv):
        return (self.video(i) for i in range(self.n))


class ShiftModel(CopySource):
    """Returns the driving frames, brightened inside a fixed box (so the contact error is known), with stats."""

    def animate(self, source, driving):
        out = driving.clone()
        out[..., 18:26, 10:20] = (out[..., 18:26, 10:20] + 0.3).clamp(0, 1)
        return out

    def latent_stats(self):
        return {"latent_abs_cos_spatial": torch.tensor(0.25), "latent_abs_cos_temporal": 0.5}


def test_contact_metrics_in_the_runner_pass(tmp_path):
    proto = load_protocol("synthfaces_hands", ["resolution=32", "num_frames=4", "standin_metrics=[lpips]",
                                               "metrics=[l1,ssim,lpips,l1_contact,ssim_contact,lpips_contact,"
                                               "contact_rate]"])
    data = HandsData()
    res = run_evaluation(ShiftModel(CopySourceConfig()), data, proto, tmp_path, progress=False)
    frames = pd.read_csv(tmp_path / "per_frame.csv")
    assert {"l1_contact", "ssim_contact", "lpips_alex_contact_STANDIN", "contact_rate"} <= set(frames.columns)
    # frame 0 (source) not scored; frame 1 has no contact → NaN, frames 2–3 in contact
    assert list(frames.contact_rate) == [0.0, 1.0, 1.0] * 2 and frames.l1_contact.isna().tolist() == [True, False, False] * 2
    assert res["metrics"]["contact_rate"] == pytest.approx(2 / 3)
    # values against the pure functions on the same tensors
    v = data.video(0)
    pred = ShiftModel(CopySourceConfig()).animate(v["source"][None], v["driving"][None])[0]
    region = contact_region(v["masks"]["hand"], v["masks"]["face"], 3)
    l1 = masked_l1(pred[1:], v["target"][1:], region[1:]).double().numpy()
    ss = masked_ssim(pred[1:], v["target"][1:], region[1:]).double().numpy()
    assert np.allclose(frames.l1_contact[:3], l1, equal_nan=True, atol=1e-6) and l1[1] > 0.05
    assert np.allclose(frames.ssim_contact[:3], ss, equal_nan=True, atol=1e-6) and ss[1] < 0.99
    # the whole-frame metrics dilute the same error: the contact L1 is larger
    assert frames.l1_contact[1] > frames.l1[1]
    # lpips_contact shares lpips_alex's network and equals masked_lpips with it
    from eval.suite import build_suite

    suite = build_suite(proto)
    lp, lpc = suite.frame_metrics[2], next(m for m in suite.frame_metrics if m.name.startswith("lpips_alex_contact"))
    assert lpc.lpips is lp and suite.standin
    ref = masked_lpips(lp, pred[1:], v["target"][1:], region[1:], 64).numpy()
    assert np.allclose(frames.lpips_alex_contact_STANDIN[:3], ref, equal_nan=True, atol=1e-5)
    # model statistics: recorded under metrics (so the table has columns) and listed
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["metrics"]["latent_abs_cos_spatial"] == pytest.approx(0.25)
    assert on_disk["metrics"]["latent_abs_cos_temporal"] == pytest.approx(0.5)
    assert on_disk["model_stats"] == ["latent_abs_cos_spatial", "latent_abs_cos_temporal"]
    from eval.table import make_table

    make_table([tmp_path], out=tmp_path / "table", use_wandb=False)
    table = pd.read_csv(tmp_path / "table" / "table.csv")
    assert any("latent_abs_cos_spatial" in c for c in table.columns)


def test_contact_metrics_nan_without_masks_and_radius_matters():
    proto_masks = HandsData(n=1).video(0)
    fb_kw = dict(pred=proto_masks["driving"][1:] * 0.5, target=proto_masks["target"][1:], source=proto_masks["source"])
    from eval.metrics import FrameBatch

    assert np.isnan(ContactMetric("l1").frames(FrameBatch(**fb_kw))).all()
    assert np.isnan(ContactMetric("rate").frames(FrameBatch(**fb_kw))).all()   # unknown, not "no contact"
    masks = {k: v[1:] for k, v in proto_masks["masks"].items()}
    r0 = ContactMetric("rate", radius=0).frames(FrameBatch(**fb_kw, masks=masks))
    r3 = ContactMetric("rate", radius=3).frames(FrameBatch(**fb_kw, masks=masks))
    assert r0.sum() <= r3.sum() and r3.sum() == 2


def test_real_datamodule_masks_reach_the_region_metrics(tmp_path, synth_root):
    """SynthFaces' masks (meta npz) flow through VideoClipDataModule.eval_dataset into the contact metrics."""
    from datamodules import VideoClipDataModule

    dm = VideoClipDataModule(root=str(synth_root), resolution=32, num_workers=0, test_fraction=0.25, val_fraction=0.1)
    proto = load_protocol("synthfaces_hands", ["resolution=32", "num_frames=12", "max_videos=4"])
    res = run_evaluation(CopySource(CopySourceConfig()), dm, proto, tmp_path, progress=False)
    ds = dm.eval_dataset(split="test", mode="self", num_frames=12, stride=1, max_videos=4)
    rates = []
    for i in range(len(ds)):
        m = ds[i]["masks"]
        rates += (contact_region(m["hand"][1:], m["face"][1:], 3).flatten(1).sum(1) > 0).float().tolist()
    assert res["metrics"]["contact_rate"] == pytest.approx(np.mean(rates))
    assert (res["metrics"]["contact_rate"] > 0) == math.isfinite(res["metrics"]["l1_contact"])


@pytest.mark.parametrize("override", ["experiment=interanimate_synthfaces", "sweep=interanimate_ortho"])
def test_interanimate_configs_use_the_hands_protocol(override, compose_cfg):
    cfg = compose_cfg("train", [override])
    assert cfg.eval_protocol.name == "synthfaces_hands" and "l1_contact" in cfg.eval_protocol.metrics
    assert cfg.data.root.endswith("synthfaces_tiny_hands_s0") and cfg.data.synth.hand_prob == 0.7
