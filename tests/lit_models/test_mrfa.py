"""MRFA: refinement call counts, K = 0 ≡ prior-only, loss weights, shapes, priors, clipping, training, checkpoints.
(Numerical identity with the official code: test_mrfa_official.py.)"""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lit_models.mrfa import MRFA


@pytest.fixture(scope="module")
def tiny_model_cfg():
    from experiments.compose import compose

    return compose("train", ["model=mrfa_tiny"]).model


def make(cfg, **over):
    """The tiny model at 32² with 5 scales (2² … 32²; K ≤ 5) unless overridden (64²: 6 scales as the official)."""
    c = OmegaConf.merge(cfg, {"resolution": 32, "generator": {"num_up_blocks": 4}, "refine_iters": 5}, over)
    torch.manual_seed(0)
    return MRFA(c)


def rand_batch(B=2, T=1, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"source": torch.rand(B, 3, res, res, generator=g), "driving": torch.rand(B, T, 3, res, res, generator=g)}


def count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


# ---- K changes the computation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [1, 2, 5])
def test_refine_iters_sets_number_of_refinement_calls(tiny_model_cfg, K):
    m = make(tiny_model_cfg, refine_iters=K).eval()
    upd, h1 = count_calls(m.decoder.refine)
    corr, h2 = count_calls(m.decoder.kp_img)
    m.animate(*rand_batch(T=1).values())
    h1.remove(), h2.remove()
    assert len(upd) == K and len(m.decoder.to_context) == K
    assert len(corr) == 1          # the correlation volume is built once per forward, looked up K times


def test_k0_is_exactly_the_prior_only_model(tiny_model_cfg):
    m0 = make(tiny_model_cfg, refine_iters=0).eval()
    m2 = make(tiny_model_cfg, refine_iters=2).eval()
    assert m0.refiner is None                                            # nothing beyond the prior is built
    missing, unexpected = m0.load_state_dict(m2.state_dict(), strict=False)
    assert not missing and all(k.startswith(("decoder.kp", "decoder.pos_embedding", "decoder.corr_enc",
                                             "decoder.refine", "decoder.to_context")) for k in unexpected)
    b = rand_batch(T=2, seed=1)
    out0 = m0.animate(b["source"], b["driving"])
    # the K=2 model with refinement switched off runs the same code path: bit-identical
    assert torch.equal(m2.animate(b["source"], b["driving"], refine_iters=0), out0)
    # refinement changes the frames
    assert (m2.animate(b["source"], b["driving"]) - out0).abs().max() > 1e-4
    with pytest.raises(ValueError, match="refinement steps"):
        m2.animate(b["source"], b["driving"], refine_iters=3)


def test_norm_group_makes_the_network_batch_independent(tiny_model_cfg):
    """``model.norm=group`` swaps every BatchNorm2d of the official blocks (MTIA stem, dense motion, refiner) for
    GroupNorm: in training mode a batch of 2 then computes what each sample alone computes (DDP on CPU has no
    SyncBatchNorm); the official ``batch`` does not."""
    b = rand_batch(B=2, T=1, seed=2)
    for norm in ("group", "batch"):
        m = make(tiny_model_cfg, norm=norm, refine_iters=2).train()
        assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) == (norm == "batch")
        with torch.no_grad():
            both = m.animate(b["source"], b["driving"])
            one = torch.cat([m.animate(b["source"][i:i + 1], b["driving"][i:i + 1]) for i in range(2)])
        gap = (both - one).abs().max().item()
        assert (gap < 1e-5) if norm == "group" else (gap > 1e-3), (norm, gap)


# ---- losses: lambda = 0 removes the term and skips its computation --------------------------------------------
def test_lambda_zero_skips_terms(tiny_model_cfg, monkeypatch):
    from lit_models.common.keypoints import RandomTransform
    from lit_models.common.perceptual import MultiScalePerceptualLoss

    b = rand_batch()
    m = make(tiny_model_cfg, refine_iters=1)
    terms = m.compute_losses(b)
    assert set(terms) == {"loss_perceptual", "loss_equivariance_value", "loss_equivariance_jacobian"}
    assert all(torch.isfinite(v) for v in terms.values())

    def boom(*a, **k):
        raise AssertionError("computed a term whose lambda is 0")

    monkeypatch.setattr(RandomTransform, "jacobian", boom)
    m = make(tiny_model_cfg, refine_iters=1, lambda_equivariance_jacobian=0.0)
    assert "loss_equivariance_jacobian" not in m.compute_losses(b)

    m = make(tiny_model_cfg, refine_iters=1, lambda_equivariance_jacobian=0.0, lambda_equivariance_value=0.0)
    kp_calls, h = count_calls(m.kp_detector)
    terms = m.compute_losses(b)
    h.remove()
    assert set(terms) == {"loss_perceptual"} and len(kp_calls) == 2      # no transformed-frame detection

    monkeypatch.setattr(MultiScalePerceptualLoss, "forward", boom)
    m = make(tiny_model_cfg, refine_iters=1, lambda_perceptual=0.0, lambda_equivariance_jacobian=0.0)
    assert set(m.compute_losses(b)) == {"loss_equivariance_value"}


def test_vgg_perceptual_without_weights_names_the_file(tiny_model_cfg, tmp_path):
    m = make(tiny_model_cfg, perceptual="vgg19", vgg_weights=str(tmp_path / "vgg19-dcbb9e9d.pth"))
    with pytest.raises(FileNotFoundError, match=r"vgg19-dcbb9e9d\.pth.*pyramid_l1_ssim"):
        m.on_fit_start()


def test_pyramid_perceptual_matches_reference():
    """pyramid_l1_ssim = Σ_levels L1 + (1 - SSIM), against torchmetrics' SSIM and a plain L1."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    from lit_models.common.perceptual import MultiScalePerceptualLoss

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    loss = MultiScalePerceptualLoss("pyramid_l1_ssim", scales=[1.0])(a, b)
    ref = (a - b).abs().mean() + 1 - ssim(a, b, data_range=1.0, kernel_size=11, sigma=1.5)
    torch.testing.assert_close(loss, ref)
    assert MultiScalePerceptualLoss("pyramid_l1_ssim")(a, a) < 1e-5


# ---- shapes -----------------------------------------------------------------------------------------------------
def test_shapes_64_absolute_and_relative(tiny_model_cfg):
    m = make(tiny_model_cfg, resolution=64, refine_iters=4, generator={"num_up_blocks": 5}).eval()
    b = rand_batch(B=2, T=3, res=64)
    out = m.animate(b["source"], b["driving"])
    assert out.shape == (2, 3, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
    # relative transfer with the source as the initial driving frame is the absolute transfer
    drv = torch.cat([b["source"][:, None], b["driving"]], 1)
    torch.testing.assert_close(m.animate(b["source"], drv, relative=True), m.animate(b["source"], drv),
                               atol=1e-4, rtol=0)
    # ... and differs from it when the initial frame is another image (explicit driving_initial honoured)
    rel = m.animate(b["source"], b["driving"], relative=True, driving_initial=b["driving"][:1, 1])
    assert rel.shape == out.shape and (rel - out).abs().max() > 1e-4


def test_shapes_256_six_scales(tiny_model_cfg):
    """256² with the official scale layout (5 up blocks → 6 scales 8² … 256², K = 6 one per scale), tiny widths."""
    m = make(tiny_model_cfg, resolution=256, refine_iters=6, generator={"num_up_blocks": 5}).eval()
    calls, h = count_calls(m.decoder.refine)
    with torch.no_grad():
        x = torch.rand(1, 3, 256, 256)
        out = m.generate(x, m.kp_detector(x), m.kp_detector(x.flip(-1)))
    h.remove()
    assert out["prediction"].shape == (1, 3, 256, 256) and len(calls) == 6
    assert out["deformation"].shape == (1, 256, 256, 2) and out["occlusion"].shape == (1, 1, 256, 256)
    assert [f.shape[-1] for f in m.decoder.generator.encode(x)] == [8, 16, 32, 64, 128, 256]


def test_fomm_and_tps_priors(tiny_model_cfg):
    m = make(tiny_model_cfg, prior="fomm", refine_iters=2, kp={"block_expansion": 8, "max_features": 32,
                                                                "num_blocks": 2})
    assert set(m.compute_losses(rand_batch())) == {"loss_perceptual", "loss_equivariance_value",
                                                   "loss_equivariance_jacobian"}
    m = make(tiny_model_cfg, prior="tps", num_kp=3, kp={"tps_backbone": "conv", "block_expansion": 8},
             use_bg_motion=True, lambda_bg=10.0, refine_iters=2)
    terms = m.compute_losses(rand_batch())
    assert set(terms) == {"loss_perceptual", "loss_equivariance_value", "loss_bg"}      # no Jacobians in TPS
    assert m.eval().animate(*rand_batch(T=2).values(), relative=True).shape == (2, 2, 3, 32, 32)
    with pytest.raises(ValueError, match="use_bg_motion"):
        make(tiny_model_cfg, lambda_bg=1.0)
    with pytest.raises(ValueError, match="model.prior"):
        make(tiny_model_cfg, prior="mtia2")


def test_gradient_clipping_is_the_official_one(tiny_model_cfg):
    """Official train.py: ∞-norm clip 10 on the prior's parameters (encoder, dense motion), not on the decoder."""
    m = make(tiny_model_cfg, refine_iters=1)
    for p in m.parameters():
        p.grad = torch.full_like(p, 50.0)
    m.configure_gradient_clipping(None)
    assert max(p.grad.abs().max() for p in m.encoder.parameters()) <= 10.0 + 1e-4
    assert max(p.grad.abs().max() for p in m.dense_motion.parameters()) <= 10.0 + 1e-4
    assert min(p.grad.abs().min() for p in m.decoder.parameters()) == 50.0
    m = make(tiny_model_cfg, refine_iters=1, gradient_clip_val=0.0)
    for p in m.parameters():
        p.grad = torch.full_like(p, 50.0)
    m.configure_gradient_clipping(None)
    assert min(p.grad.abs().min() for p in m.encoder.parameters()) == 50.0


# ---- training and checkpoints -----------------------------------------------------------------------------------
def blob_batch(B=4, res=32, seed=0):
    """Source: a textured blob; driving: the same blob moved (the motion MRFA must explain)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, res), torch.linspace(-1, 1, res), indexing="ij")

    def render(cx, cy, color):
        d = ((xx - cx) ** 2 + (yy - cy) ** 2) / 0.15
        return 0.2 + color[:, None, None] * torch.exp(-d) * (0.75 + 0.25 * torch.sin(6 * (xx - cx)))

    src, drv = [], []
    for _ in range(B):
        c = torch.rand(3, generator=g) * 0.6 + 0.2
        p = torch.rand(4, generator=g) * 0.8 - 0.4
        src.append(render(p[0], p[1], c))
        drv.append(render(p[2], p[3], c))
    return {"source": torch.stack(src).clamp(0, 1), "driving": torch.stack(drv)[:, None].clamp(0, 1)}


def test_training_steps_reduce_the_loss(tiny_model_cfg):
    m = make(tiny_model_cfg, refine_iters=2, optimizer={"lr": 2e-3})
    b = blob_batch()
    opt = m.configure_optimizers()

    def loss():
        torch.manual_seed(1)   # same equivariance transform for the before/after comparison
        return m.weighted_total(m.compute_losses(b))

    with torch.no_grad():
        before = float(loss())
    for _ in range(12):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.8 * before, (before, after)


def test_checkpoint_load_model_animate(tiny_model_cfg, tmp_path):
    import lightning as L

    from lit_models.registry import load_model

    m = make(tiny_model_cfg, refine_iters=2)
    data = [blob_batch(B=2, seed=i) for i in range(2)]
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(m, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_model(str(path))
    assert isinstance(loaded, MRFA) and loaded.cfg.refine_iters == 2
    b = rand_batch(T=2, seed=3)
    out = loaded.animate(b["source"], b["driving"], relative=True)
    assert out.shape == (2, 2, 3, 32, 32)
    torch.testing.assert_close(out, m.eval().animate(b["source"], b["driving"], relative=True))


# ---- configs ----------------------------------------------------------------------------------------------------
def test_configs_compose(compose_cfg):
    full = compose_cfg("train", ["model=mrfa"]).model
    assert (full.resolution, full.num_kp, full.optimizer.lr, full.refine_iters, full.perceptual) == (256, 10, 2e-4, 6, "vgg19")
    assert (full.prior, full.refine_schedule, full.gradient_clip_val, tuple(full.optimizer.betas)) == ("mtia", "official", 10.0,
                                                                                           (0.5, 0.999))
    exp = compose_cfg("train", ["experiment=mrfa_synthfaces"])
    assert exp.model.name == "mrfa_tiny" and exp.model.perceptual == "pyramid_l1_ssim"
    assert compose_cfg("train", ["experiment=mrfa_real", "data.root=/x"]).model.resolution == 256
    sweep = compose_cfg("train", ["sweep=mrfa_refine_iters"])
    assert list(sweep.axes) == ["model.refine_iters"] and sweep.sweep_name == "mrfa_refine_iters"
    with pytest.raises(Exception, match="refine_iter"):
        compose_cfg("train", ["model=mrfa_tiny", "model.refine_iter=2"])


# ---- building blocks against reference computations ----------------------------------------------------------
def test_fomm_sparse_motion_is_the_first_order_map():
    from lit_models.common.dense_motion import fomm_sparse_motion
    from lit_models.common.warp import make_coordinate_grid

    g = torch.Generator().manual_seed(0)
    kp_d = torch.rand(2, 3, 2, generator=g) - 0.5
    J_s, J_d = torch.eye(2) + 0.2 * torch.randn(2, 3, 2, 2, generator=g), torch.eye(2) + 0.2 * torch.randn(2, 3, 2, 2, generator=g)
    kp_s = kp_d + 0.1
    out = fomm_sparse_motion(5, 5, {"value": kp_s, "jacobian": J_s}, {"value": kp_d, "jacobian": J_d})
    z = make_coordinate_grid(5, 5)
    b, k = 1, 2
    ref = kp_s[b, k] + (z - kp_d[b, k]) @ (J_s[b, k] @ torch.inverse(J_d[b, k])).T
    torch.testing.assert_close(out[b, k], ref, atol=1e-5, rtol=1e-5)


def test_tps_interpolates_and_reproduces_affine_maps():
    from lit_models.common.keypoints import tps_apply, tps_fit

    g = torch.Generator().manual_seed(0)
    ctrl, vals = torch.rand(3, 5, 2, generator=g) * 2 - 1, torch.rand(3, 5, 2, generator=g) * 2 - 1
    w, A = tps_fit(ctrl, vals)
    torch.testing.assert_close(tps_apply(ctrl, ctrl, w, A), vals, atol=1e-4, rtol=1e-4)
    M, t = torch.tensor([[1.1, 0.2], [-0.1, 0.9]]), torch.tensor([0.05, -0.1])
    w, A = tps_fit(ctrl, ctrl @ M.T + t)
    pts = torch.rand(3, 7, 2, generator=g) * 2 - 1
    torch.testing.assert_close(tps_apply(pts, ctrl, w, A), pts @ M.T + t, atol=1e-4, rtol=1e-4)


def test_random_transform_jacobian_matches_finite_differences():
    from lit_models.common.keypoints import RandomTransform

    T = RandomTransform(2, sigma_affine=0.1, sigma_tps=0.05, generator=torch.Generator().manual_seed(0))
    p = torch.rand(2, 4, 2, dtype=torch.float64) - 0.5
    T.theta, T.control_points, T.control_params = T.theta.double(), T.control_points.double(), T.control_params.double()
    J = T.jacobian(p)
    eps = 1e-6
    for i in range(2):
        d = torch.zeros_like(p)
        d[..., i] = eps
        fd = (T.warp_coordinates(p + d) - T.warp_coordinates(p - d)) / (2 * eps)
        torch.testing.assert_close(J[..., :, i], fd, atol=1e-6, rtol=1e-5)


def test_equivariance_transform_and_loss_pyramid_are_the_official_ones(tiny_model_cfg, monkeypatch):
    """The official Transform's radial term is d² log(d + 1e-6) of the *L1* distance d to each control point (a
    reference written from modules/model.py), its frame warp uses grid_sample's align_corners=False, and the
    perceptual loss's pyramid is the official ImagePyramide (AntiAliasInterpolation2d: Gaussian + nearest), not an
    antialiased bilinear resize. (Checked once against the official code itself: pyramid max diff 0,
    warp_coordinates / jacobian 0, transform_frame 7e-6.)"""
    import torch.nn.functional as F

    from lit_models.common.keypoints import RandomTransform
    from lit_models.common.warp import downsample_image, make_coordinate_grid
    from lit_models.mrfa import losses
    from lit_models.mrfa.blocks import AntiAliasInterpolation2d

    T = RandomTransform(2, sigma_affine=0.1, sigma_tps=0.05, generator=torch.Generator().manual_seed(0))
    z = torch.rand(2, 7, 2) * 2 - 1
    ctrl = make_coordinate_grid(5, 5).view(-1, 2)
    d = (z[:, :, None] - ctrl[None, None]).abs().sum(-1)
    ref = (torch.einsum("bij,bnj->bni", T.theta[:, :, :2], z) + T.theta[:, None, :, 2]
           + (d ** 2 * torch.log(d + 1e-6) * T.control_params).sum(-1, keepdim=True))
    torch.testing.assert_close(T.warp_coordinates(z), ref, atol=1e-6, rtol=1e-6)

    seen = []
    real_grid_sample = F.grid_sample
    monkeypatch.setattr(F, "grid_sample", lambda *a, **k: seen.append(k.get("align_corners")) or real_grid_sample(*a, **k))
    m = make(tiny_model_cfg, refine_iters=0)
    drv = torch.rand(2, 3, 32, 32)
    losses.equivariance_losses(m._kp, drv, m._kp(drv), use_value=True, use_jacobian=False, sigma_affine=0.05,
                               sigma_tps=0.005, points_tps=5)
    assert seen and seen[0] is False

    x = torch.rand(2, 3, 32, 32)
    pyr = make(tiny_model_cfg, perceptual="pyramid_l1_ssim", perceptual_scales=[1.0, 0.5, 0.25]).perceptual_loss.pyramid
    for level, s in zip(pyr, (1.0, 0.5, 0.25)):
        torch.testing.assert_close(level(x), AntiAliasInterpolation2d(3, s)(x), atol=0, rtol=0)
    assert (pyr[1](x) - downsample_image(x, 0.5)).abs().max() > 1e-3      # the bilinear resize is another pyramid


@pytest.mark.fixtures
def test_experiments_animate_real_portrait_and_clip(tiny_model_cfg, real_fixtures, tmp_path):
    """`python -m experiments.animate` path on a real portrait + real driving clip, relative and absolute."""
    from experiments.compose import compose
    from experiments.animate import animate, crop_resize, read_image, read_video, run_animation, square_box

    from lit_models.registry import load_model

    m = make(tiny_model_cfg, resolution=64, refine_iters=2, generator={"num_up_blocks": 5})
    ckpt = tmp_path / "mrfa.ckpt"
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}, ckpt)
    src_path = real_fixtures / "portraits" / "single_face.jpg"
    drv_path = real_fixtures / "clips" / "talkinghead1kh_r0c0.mp4"

    model = load_model(str(ckpt))
    img = read_image(str(src_path))[None]
    drv, _ = read_video(str(drv_path), 5)
    source = crop_resize(img, square_box(img, "center"), 64)[0]
    driving = crop_resize(drv, square_box(drv, "center"), 64)
    model.cfg.animate_chunk = 2               # MRFA chunks internally: the initial frame is kept across its chunks
    rel = run_animation(model, source, driving, relative=True, progress=False)
    ab = run_animation(model, source, driving, relative=False, progress=False)
    assert rel.shape == ab.shape == (5, 3, 64, 64)
    assert (rel - ab).abs().max() > 1e-4
    model.cfg.animate_chunk = 64
    whole = model.animate(source[None], driving[None], relative=True)[0]
    torch.testing.assert_close(rel, whole, atol=1e-4, rtol=0)           # chunking does not change relative motion

    for relative in ("true", "false"):
        cfg = compose("animate", [f"ckpt={ckpt}", f"source={src_path}", f"driving={drv_path}",
                                  f"out={tmp_path / f'out_{relative}.mp4'}", "max_frames=4",
                                  f"relative_motion={relative}"])
        assert animate(cfg).stat().st_size > 0


@pytest.mark.slow
def test_full_paper_config_256(compose_cfg):
    """model=mrfa as composed (the official network, 114.34 M parameters, K = 6): one training step, animate."""
    cfg = compose_cfg("train", ["model=mrfa", "model.perceptual=pyramid_l1_ssim"]).model
    m = MRFA(cfg)
    assert sum(p.numel() for p in m.parameters()) == 114_339_206
    calls, h = count_calls(m.decoder.refine)
    loss = m.weighted_total(m.compute_losses(rand_batch(B=2, res=256)))
    loss.backward()
    assert len(calls) == 6 and torch.isfinite(loss)
    out = m.eval().animate(*rand_batch(B=1, T=2, res=256).values(), relative=True)
    h.remove()
    assert out.shape == (1, 2, 3, 256, 256)


# ---- motion diagnostics (eval.probes.mrfa) -------------------------------------------------------------------
def test_keypoint_motion_error_of_known_motions():
    """A backward motion T(p) = p + (2, -1) px is exact for keypoints moved by (−2, +1) and 2.24 px off for
    unmoved ones; the identity grid's error is the keypoint displacement itself."""
    from lit_models.common.warp import make_coordinate_grid
    from eval.probes.mrfa import keypoint_motion_error

    size = 64
    ident = make_coordinate_grid(size, size)[None]
    shift = torch.tensor([2.0, -1.0]) / (size - 1) * 2
    moved = ident + shift
    g = torch.Generator().manual_seed(0)
    kp_d = 5 + torch.rand(1, 7, 2, generator=g) * 50                     # driving keypoints, away from borders
    kp_s = kp_d + torch.tensor([2.0, -1.0])                              # where they come from in the source
    assert keypoint_motion_error(moved, kp_s, kp_d, size).max() < 1e-4
    assert torch.allclose(keypoint_motion_error(ident, kp_s, kp_d, size), torch.full((1, 7), 5 ** 0.5), atol=1e-4)
    # a coarser grid of the same motion (the prior runs at a lower resolution) gives the same answer
    coarse = make_coordinate_grid(16, 16)[None] + shift
    assert keypoint_motion_error(coarse, kp_s, kp_d, size).max() < 1e-4


def test_diagnose_k0_has_no_refinement_shift(tiny_model_cfg):
    from eval.probes.mrfa import diagnose

    g = torch.Generator().manual_seed(1)
    clip = torch.rand(4, 3, 32, 32, generator=g)
    kp = 4 + torch.rand(4, 5, 2, generator=g) * 24
    sample = {"source": clip[0], "driving": clip, "keypoints": kp}
    d0 = diagnose(make(tiny_model_cfg, refine_iters=0).eval(), [sample], 32)
    assert d0["refine_shift"] < 1e-5            # (the prior grid is resized to the finest scale: float-level only)
    assert d0["kp_motion_err_prior"] == pytest.approx(d0["kp_motion_err_refined"], rel=1e-4)
    assert d0["kp_motion_err_zero"] == pytest.approx(float((kp[1:] - kp[0]).norm(dim=-1).mean()), rel=1e-5)
    m2 = make(tiny_model_cfg, refine_iters=2).eval()
    d2 = diagnose(m2, [sample], 32)
    assert d2["refine_shift"] > 1e-3
    assert abs(d2["kp_motion_err_refined"] - d2["kp_motion_err_prior"]) > 1e-3


def test_mrfa_probe_reads_the_protocols_self_test_set(tiny_model_cfg):
    """The eval probe `mrfa.keypoint_motion` (merged into metrics.json by the entry points): on samples with
    ground-truth keypoints it reports the motion errors (= `diagnose` on the same sample); a cross protocol or keypoint-free data gives {} (nothing invented)."""
    from eval.probes import run_probes
    from eval.probes.mrfa import diagnose

    g = torch.Generator().manual_seed(2)
    clip = torch.rand(3, 3, 32, 32, generator=g)
    with_kp = {"source": clip[0], "driving": clip, "keypoints": 4 + torch.rand(3, 5, 2, generator=g) * 24}

    class DM:
        def __init__(self, items):
            self.items, self.calls = items, []

        def eval_dataset(self, **kw):
            self.calls.append(kw)
            return self.items

    proto = OmegaConf.create({"mode": "self", "split": "test", "num_frames": 3, "stride": 1, "max_videos": 0})
    model = make(tiny_model_cfg, refine_iters=1)
    dm = DM([with_kp])
    res = run_probes(model, dm, proto)
    ref = diagnose(make(tiny_model_cfg, refine_iters=1).eval(), [with_kp], 32)
    assert res == {"motion_err_zero": ref["kp_motion_err_zero"], "motion_err_prior": ref["kp_motion_err_prior"],
                   "motion_err_refined": ref["kp_motion_err_refined"], "refine_shift": ref["refine_shift"]}
    assert set(res) == {"motion_err_zero", "motion_err_prior", "motion_err_refined", "refine_shift"}
    assert dm.calls[0]["mode"] == "self" and dm.calls[0]["num_frames"] == 3 and model.training
    assert run_probes(model, DM([{k: v for k, v in with_kp.items() if k != "keypoints"}]), proto) == {}
    assert run_probes(model, dm, OmegaConf.merge(proto, {"mode": "synth_cross"})) == {}
