"""`experiments.animate` with InterAnimate: the ID preserver reads the full-resolution source crop (a real portrait),
not the model's 16² input, so the identity tokens come from a detected face."""
from __future__ import annotations

import numpy as np
import pytest
import torch

SMALL = ["model=interanimate_tiny", "model.resolution=16", "model.unet.block_out_channels=[16,32]",
         "model.unet.sample_size=8", "model.motion_channels=[8]", "model.latent_dim=16", "model.num_spatial_latents=8",
         "model.num_temporal_latents=4", "model.num_inference_steps=1", "model.window_size=2", "model.window_overlap=0",
         "data.resolution=16"]


@pytest.fixture(scope="module")
def tiny_model():
    from experiments.compose import compose
    from eval.faces import attach_identity_encoder
    from lit_models.registry import build_model

    torch.manual_seed(0)
    return attach_identity_encoder(build_model(compose("train", SMALL).model)).eval()


@pytest.mark.fixtures
def test_animate_identity_tokens_come_from_the_full_resolution_face(compose_cfg, real_fixtures, tmp_path, monkeypatch,
                                                                    tiny_model):
    from experiments.animate import animate, crop_resize, read_image, square_box
    from experiments.train import save_untrained_checkpoint
    from eval.faces import IdentityEncoder
    from lit_models.interanimate.identity import IdentityProjector

    ckpt = save_untrained_checkpoint(tiny_model, tmp_path / "last.ckpt")
    seen = []
    forward = IdentityProjector.forward

    def spy(self, emb, found):
        tokens = forward(self, emb, found)
        seen.append((emb.detach().clone(), found.detach().clone(), tokens.detach().clone(), self.null.detach().clone()))
        return tokens

    monkeypatch.setattr(IdentityProjector, "forward", spy)
    portrait = real_fixtures / "portraits" / "astronaut.png"
    out = tmp_path / "anim.mp4"
    cfg = compose_cfg("animate", [f"ckpt={ckpt}", f"source={portrait}", f"out={out}", "max_frames=2",
                                  f"driving={real_fixtures / 'clips' / 'hand_over_face_pexels.mp4'}", f"run_dir={tmp_path}"])
    animate(cfg)
    assert out.exists() and seen

    # what the model was given: a detected face's 128-d dlib embedding, in every denoiser call (cond and uncond)
    img = read_image(portrait)[None]
    box = square_box(img, cfg.animate_crop)
    enc = IdentityEncoder("dlib")
    full_emb, full_found = enc(crop_resize(img, box, min(512, box[2] - box[0])))
    assert bool(full_found.all()) and full_emb.norm() > 0.1
    for emb, found, tokens, null in seen:
        assert bool(found.all())
        assert torch.allclose(emb.float(), full_emb.float(), atol=1e-5)
        assert (tokens - null).abs().amax() > 1e-3          # identity tokens, not the learned no-identity tokens
    # why the face is found on the full-size frame: at the model's input size the detector finds none
    _, small_found = enc(crop_resize(img, box, 16))
    assert not bool(small_found.any())


def test_animate_identity_argument_precedence(tiny_model, monkeypatch):
    """`identity` (precomputed) wins over `identity_source`, which wins over `source`; `last_identity` records it."""
    m = tiny_model
    calls = []

    def fake_identity(img):
        calls.append(tuple(img.shape[-2:]))
        return torch.zeros(img.shape[0], 128), torch.zeros(img.shape[0], dtype=torch.bool)

    monkeypatch.setattr(m, "identity", fake_identity)
    src, drv = torch.rand(1, 3, 16, 16), torch.rand(1, 2, 3, 16, 16)
    m.animate(src, drv)
    m.animate(src, drv, identity_source=torch.rand(1, 3, 96, 96))
    emb = torch.randn(1, 128)
    m.animate(src, drv, identity_source=torch.rand(1, 3, 96, 96), identity=(emb, torch.ones(1, dtype=torch.bool)))
    assert calls == [(16, 16), (96, 96)]
    assert torch.equal(m.last_identity["embedding"], emb) and bool(m.last_identity["found"].all())
    with pytest.raises(ValueError, match="identity_source"):
        m.animate(src, drv, identity_source=torch.rand(2, 3, 96, 96))
    assert np.isfinite(m.animate(src, drv).numpy()).all()
