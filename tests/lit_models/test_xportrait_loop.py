"""The whole official X-Portrait sampling loop (``DDIMSampler_ReferenceOnly`` with ``num_overlap=4``: 41 frames,
4 DDIM steps, windows of 16 from injected offsets, guidance 5, per-frame reference rows) on the reduced official
model, against ``XPortrait.animate`` on the same model imported through ``import_official`` with the default
``model=xportrait_reduced`` + ``sampling=xportrait_official`` config (tests/golden/xportrait/loop_official.pt;
tests/golden/xportrait/NOTES.md says how it was made). The VAE is the fixture's identity: latents are compared.
The driving frames (uniform uint8 noise from the golden's seeded generator) are regenerated here and checked against
the golden's sha256 rather than stored."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from test_xportrait_official import golden, need, reduced  # noqa: F401  (module fixtures)

LOOP = Path(__file__).resolve().parents[1] / "golden" / "xportrait" / "loop_official.pt"


def driving_u8(N: int, H: int) -> torch.Tensor:
    """The golden's driving frames: after z_ref (two randn) and noise (one randn), ``torch.randint(0, 256, (N, 3,
    8H, 8H))`` from ``torch.Generator().manual_seed(7)``, the draw order of the generator script."""
    g = torch.Generator().manual_seed(7)
    torch.randn(1, 4, H, H, generator=g), torch.randn(N, 4, H, H, generator=g), torch.randn(N, 4, H, H, generator=g)
    return torch.randint(0, 256, (N, 3, 8 * H, 8 * H), generator=g, dtype=torch.uint8)


def test_regenerated_driving_frames_are_the_goldens():
    g = torch.load(LOOP, weights_only=True)
    N, H = g["latents"].shape[0], g["latents"].shape[-1]
    d = driving_u8(N, H)
    assert list(d.shape) == g["driving_u8_shape"]
    assert hashlib.sha256(d.numpy().tobytes()).hexdigest() == g["driving_u8_sha256"]
    assert hashlib.sha256(driving_u8(N + 1, H)[:N].numpy().tobytes()).hexdigest() != g["driving_u8_sha256"]


@torch.no_grad()
def test_animate_equals_the_official_sampling_loop(reduced, monkeypatch):  # noqa: F811
    model, _ = reduced
    g = torch.load(LOOP, weights_only=True)
    N, H = g["latents"].shape[0], g["latents"].shape[-1]
    assert torch.equal(model.null_context, g["context"]) or (model.null_context - g["context"]).abs().max() < 1e-7
    z_ref, decoded, served = g["z_ref"], [], {"n": 0}
    d8 = driving_u8(N, H)
    assert hashlib.sha256(d8.numpy().tobytes()).hexdigest() == g["driving_u8_sha256"], "regenerated driving frames"

    def sample(x, generator):           # the official reference rows: "posterior samples" of the identity VAE
        i = served["n"]
        served["n"] += len(x)
        return z_ref[i:i + len(x)]

    def decode(z):
        decoded.append(z.clone())
        return torch.zeros(len(z), 3, 8 * H, 8 * H)

    monkeypatch.setattr(model, "encode", lambda x: torch.zeros(x.shape[0], 4, H, H))
    monkeypatch.setattr(model.codec, "sample", sample)
    monkeypatch.setattr(model, "decode", decode)
    driving = (d8.float() / 255)[None]
    model.animate(torch.zeros(1, 3, 8 * H, 8 * H), driving, patch_centres=g["patch_centres"][None],
                  noise=g["noise"][None], offsets=g["offsets"], num_inference_steps=g["steps"])
    ours = torch.cat(decoded)
    ref = g["latents"]
    diff = float((ours - ref).abs().max())
    print("max abs diff:", json.dumps({"latents": diff, "max_abs": float(ref.abs().max())}))
    assert served["n"] == N
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)
