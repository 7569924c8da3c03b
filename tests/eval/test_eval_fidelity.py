"""Any checkpoint under any protocol, the protocol is what happens, one definition per metric."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval.protocol import load_protocol, protocol_hash
from eval.runner import run_evaluation
from lit_models.baselines import CopySource
from lit_models.baselines.config import CopySourceConfig


class ResolutionSpy(CopySource):
    """Copy-source that claims to be a trained model at ``resolution`` and records the input sizes it was given."""

    def __init__(self, resolution: int):
        super().__init__(CopySourceConfig(resolution=resolution))
        self.seen: list[tuple] = []

    @property
    def trainable(self) -> bool:
        return True

    def animate(self, source, driving):
        self.seen.append((tuple(source.shape), tuple(driving.shape)))
        return super().animate(source, driving)


def _bilinear_aa(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def test_model_runs_at_its_own_resolution_output_scored_at_the_protocols(tmp_path, fake_data):
    """A 16² model under a 32² protocol: it is fed 16² frames (the native frames resized with the protocol's
    method), its output is resized back to 32², metrics at 32², and metrics.json records both resolutions."""
    data = fake_data(n=2, T=3, size=48)                     # native 48² clips
    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=3", "metrics=[l1,psnr]"])
    model = ResolutionSpy(16)
    res = run_evaluation(model, data, proto, tmp_path, progress=False)
    assert all(src[-1] == 16 and drv[-1] == 16 for src, drv in model.seen)
    assert res["model_resolution"] == 16 and res["resolution"] == 32
    assert json.loads((tmp_path / "metrics.json").read_text())["model_resolution"] == 16
    # by hand: native → 16 (model) → copy → 32 (protocol); scored against the native frames resized to 32²
    l1 = []
    for i in range(2):
        v = fake_data(n=2, T=3, size=48).video(i)
        tgt = _bilinear_aa(v["driving"], 32)
        pred = _bilinear_aa(_bilinear_aa(v["source"][None], 16), 32)
        l1 += [(pred[0].double() - tgt[t].double()).abs().mean().item() for t in (1, 2)]
    assert res["metrics"]["l1"] == pytest.approx(np.mean(l1), abs=1e-6)
    # a 32² model under the same protocol runs at 32² and scores differently (the 16² bottleneck is gone)
    same = run_evaluation(ResolutionSpy(32), data, proto, tmp_path / "b", progress=False)
    assert same["metrics"]["l1"] < res["metrics"]["l1"]


class InputSpy(ResolutionSpy):
    def animate(self, source, driving):
        self.inputs = (source.clone(), driving.clone())
        return super().animate(source, driving)


def test_native_frames_reach_the_model_without_the_protocol_resolution_bottleneck(tmp_path, fake_data):
    """A 48² model under a 16² protocol, native 48² clips: the model gets the native frames themselves (not 48 → 16
    → 48), its output is scored at 16²; ``model_resolution`` in the protocol overrides the model's own."""
    data = fake_data(n=1, T=3, size=48)
    proto = load_protocol("synthfaces_self", ["resolution=16", "num_frames=3", "metrics=[l1]"])
    model = InputSpy(48)
    res = run_evaluation(model, data, proto, tmp_path / "a", progress=False)
    v = fake_data(n=1, T=3, size=48).video(0)
    assert torch.equal(model.inputs[0][0], v["source"]) and torch.equal(model.inputs[1][0], v["driving"])
    assert res["model_resolution"] == 48 and res["resolution"] == 16
    pinned = InputSpy(48)
    res = run_evaluation(pinned, data, load_protocol("synthfaces_self", ["resolution=16", "num_frames=3",
                                                                          "metrics=[l1]", "model_resolution=24"]),
                         tmp_path / "b", progress=False)
    assert pinned.inputs[0].shape[-1] == 24 and res["model_resolution"] == 24
    assert torch.allclose(pinned.inputs[0][0], _bilinear_aa(v["source"][None], 24)[0], atol=1e-6)


def test_evaluate_cli_runs_a_low_resolution_model_under_a_higher_resolution_protocol(compose_cfg, synth_root, tmp_path):
    """`experiments.evaluate model=… eval_protocol=…` with model.resolution (32) ≠ protocol resolution (64): it used
    to stop with `model.resolution=32 differs from data.resolution=64`."""
    from experiments.evaluate import evaluate

    cfg = compose_cfg("evaluate", ["model=copy_source", "model.resolution=32", f"data.root={synth_root}",
                                   "data.synth=null", f"run_dir={tmp_path}", "logger=csv", "data.num_workers=0",
                                   "eval_protocol=synthfaces_self", "eval_protocol.max_videos=1",
                                   "eval_protocol.num_frames=3"])
    res = evaluate(cfg)
    assert res["resolution"] == 64 and res["num_videos"] == 1 and 0 < res["metrics"]["l1"] < 1


def test_protocol_hash_excludes_fields_that_cannot_change_a_score():
    base = protocol_hash(load_protocol("vox_self"))
    for knob in ("batch_size=7", "num_grid_videos=0", "use_fid_reference_cache=false"):
        assert protocol_hash(load_protocol("vox_self", [knob])) == base, knob
    for knob in ("resize=bicubic_antialias", "resize=area", "crop=center", "psnr_mse_floor=1e-8", "fvd_clip_len=8"):
        assert protocol_hash(load_protocol("vox_self", [knob])) != base, knob


def test_psnr_is_capped_by_the_protocols_declared_floor(tmp_path, fake_data):
    """Identical frames (black on black, or copy-source on a still clip): PSNR = 10 log10(1/floor), not inf, and
    metrics.json is valid JSON (no Infinity)."""

    class Still(type(fake_data(n=1))):
        def video(self, i):
            v = super().video(i)
            still = v["source"][None].expand_as(v["driving"]).clone()
            return dict(v, driving=still, target=still)

    res = run_evaluation(CopySource(CopySourceConfig()), Still(n=2, T=3, size=16),
                         load_protocol("synthfaces_self", ["resolution=16", "num_frames=3", "psnr_mse_floor=1e-8"]),
                         tmp_path, progress=False)
    assert res["metrics"]["psnr"] == pytest.approx(80.0)
    text = (tmp_path / "metrics.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_val_l1_and_eval_l1_share_one_definition(fake_data):
    """`val/l1` (the LightningModule's validation step) skips frame 0 (the source) like the evaluation's `l1`."""
    from lit_models.baselines import DirectRegression
    from lit_models.baselines.config import DirectConfig

    model = DirectRegression(DirectConfig(resolution=32, base_channels=4, num_down=2)).eval()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    v = fake_data(n=1, T=4, size=32).video(0)
    batch = {"source": v["source"][None], "driving": v["driving"][None], "target": v["target"][None]}
    with torch.no_grad():
        model._logged_grids = 10**6
        model._eval_step(batch, "val")
        pred = model.animate(batch["source"], batch["driving"])
    frames = [(pred[0, t].double() - batch["target"][0, t].double()).abs().mean().item() for t in range(1, 4)]
    assert logged["val/l1"] == pytest.approx(np.mean(frames), rel=1e-5)


# ---- the protocol is what happens: copy-source on a real clip, computed independently ---------------------------
def _decode_pyav(path: Path, n: int) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        frames = []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            if len(frames) == n:
                break
    return np.stack(frames)


def independent_copy_source(path: Path, n: int, size: int) -> dict[str, float]:
    """skimage metrics of copy-source (frame 0 predicts frames 1..n-1) after a centre crop and the declared torch
    resize (bilinear, antialias) to size² — no code of the repo involved."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    raw = _decode_pyav(path, n)
    h, w = raw.shape[1:3]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = torch.from_numpy(raw[:, y0:y0 + s, x0:x0 + s]).permute(0, 3, 1, 2).float() / 255
    frames = _bilinear_aa(crop, size).permute(0, 2, 3, 1).double().numpy()
    src = frames[0]
    ssim = [structural_similarity(src, f, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=1.0, channel_axis=-1) for f in frames[1:]]
    psnr = [peak_signal_noise_ratio(f, src, data_range=1.0) for f in frames[1:]]
    l1 = [np.abs(src - f).mean() for f in frames[1:]]
    return {"ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr)), "l1": float(np.mean(l1))}


@pytest.mark.parametrize("clip,size,decoder", [("single_face.mp4", 256, "pyav"),
                                                ("talkinghead1kh_r0c0.mp4", 128, "decord")])
def test_copy_source_on_a_real_clip_matches_an_independent_computation(real_fixtures, tmp_path, clip, size, decoder):
    from datamodules import VideoClipDataModule

    src = real_fixtures / "clips" / clip
    if not src.is_file():
        pytest.skip(f"{src} not found")
    root = tmp_path / "root"
    (root / "test").mkdir(parents=True)
    (root / "test" / f"id0#{src.stem}#0#1.mp4").symlink_to(src)
    (root / "train").mkdir()
    (root / "train" / f"id1#{src.stem}#0#1.mp4").symlink_to(src)
    n = 8
    # data.resolution 64 and INTER_AREA would be the training-time resize: the evaluation must not use it
    dm = VideoClipDataModule(root=str(root), layout="fomm", resolution=64, crop="center", decoder=decoder,
                             num_workers=0, use_scan_cache=False)
    proto = load_protocol("vox_self", [f"resolution={size}", f"num_frames={n}", "metrics=[l1,psnr,ssim]"])
    res = run_evaluation(CopySource(CopySourceConfig()), dm, proto, tmp_path / "eval", progress=False)
    ref = independent_copy_source(src, n, size)
    print(f"\n{clip} @ {size}²: runner  l1 {res['metrics']['l1']:.6f} psnr {res['metrics']['psnr']:.4f} "
          f"ssim {res['metrics']['ssim']:.6f}\n{'':>{len(clip) + 8}}independent l1 {ref['l1']:.6f} "
          f"psnr {ref['psnr']:.4f} ssim {ref['ssim']:.6f}")
    for k in ("l1", "psnr", "ssim"):
        assert res["metrics"][k] == pytest.approx(ref[k], abs=1e-4), k
    assert res["num_frames"] == n - 1


def test_compare_runs_each_model_at_its_own_resolution(tmp_path, fake_data):
    """`eval.compare` of a 16² and a 32² model under a 32² protocol: both evaluated from one data resolution, each
    at its own model resolution, recorded in their metrics.json."""
    from eval.compare import compare

    proto = load_protocol("synthfaces_self", ["resolution=32", "num_frames=3", "metrics=[l1,psnr]"])
    low, full = ResolutionSpy(16), ResolutionSpy(32)
    res = compare(["low.ckpt", "full.ckpt"], proto, fake_data(n=3, T=3, size=48), tmp_path,
                  models={"low": low, "full": full}, num_grid_videos=1, num_resamples=200)
    assert res["results"]["low"]["model_resolution"] == 16 and res["results"]["full"]["model_resolution"] == 32
    assert {s[1][-1] for s in low.seen} == {16} and {s[1][-1] for s in full.seen} == {32}
    assert res["results"]["full"]["metrics"]["l1"] < res["results"]["low"]["metrics"]["l1"]
    assert res["grid"] is not None and res["grid"].is_file()
