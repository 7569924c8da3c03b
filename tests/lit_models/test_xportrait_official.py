"""X-Portrait against the official code (../shared/fixtures/official/xportrait): the reduced official model loaded
through the importer reproduces the official forward pass (appearance bank, pose / local ControlNet residuals, eps
of the conditional, unconditional and guided branches); the full-size model built on the meta device takes every
key of the released checkpoint's manifest; the importer round-trips a file into a checkpoint ``load_model`` reads."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lit_models.diffusion.sampling import guide
from lit_models.registry import build_model
from lit_models.xportrait import import_official as imp

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = Path(os.environ.get("PORTRAITLAB_OFFICIAL", REPO.parent / "shared" / "fixtures" / "official")) / "xportrait"
ATOL, RTOL, ATOL_GUIDED = 1e-4, 1e-5, 3e-4
# README "Counts": keys per family of model_state-415001.th
MANIFEST_COUNTS = {"unet": 686, "motion": 560, "appearance": 698, "pose": 340, "local": 340, "vae": 248, "clip": 197,
                   "ddpm": 13}


def need(name: str) -> Path:
    path = OFFICIAL / name
    if not path.exists():
        pytest.skip(f"official X-Portrait fixture {path} not found (set PORTRAITLAB_OFFICIAL)")
    return path


@pytest.fixture(scope="module")
def golden():
    return torch.load(need("reduced_io.pt"), weights_only=True)


@pytest.fixture(scope="module")
def reduced(golden):
    """``model=xportrait_reduced`` loaded from reduced_state_dict.pt through the importer's renaming (the fixture has
    no VAE / CLIP: the null context is the fixture's context row)."""
    cfg = imp.model_config(model="xportrait_reduced")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    sd = imp.load_official(need("reduced_state_dict.pt"))
    ctx = golden["inputs"]["context"]
    assert torch.equal(ctx, ctx[:1].expand_as(ctx)), "one context row for every frame (CLIP(''))"
    state, report = imp.convert(sd, cfg, {k: v.shape for k, v in model.state_dict().items()}, null_context=ctx[:1],
                                allow_missing=("vae", "clip"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("codec.") for k in missing)      # only the (absent) VAE keeps its init
    return model, report


def _close(ours, ref, atol=ATOL):
    torch.testing.assert_close(ours, ref, atol=atol, rtol=RTOL)
    return float((ours - ref).abs().max())


def _eps(model, inputs, keep: bool, ref_index=None):
    """ε for the fixture's one 16-frame window: cond (reference + both controls) or uncond (neither)."""
    x, t = inputs["x_t"], inputs["t"]
    T = x.shape[0]
    rows = {"control": inputs["pose_hint"][None], "local": inputs["local_hint"][None],
            "keep_motion": torch.full((1, T), keep)}
    ref_index = torch.arange(T)[None] if ref_index is None else ref_index
    return model.denoise(x[None], t[:1], rows, ref_index, torch.tensor([keep]))[0]


@torch.no_grad()
def test_reduced_official_model_reproduces_the_golden_tensors(reduced, golden):
    model, report = reduced
    inp, out = golden["inputs"], golden["outputs"]
    assert report["source_keys"] == report["converted"] + report["checked_or_dropped"] == 1925
    diffs = {}
    # appearance net at the CURRENT timestep (t = 500), one reference row per frame: 11 bank entries norm1(x)
    model.write_reference(inp["reference_latent"], t=inp["t"])
    bank = list(model.bank.features.values())
    assert len(bank) == len(out["attention_bank"]) == 11
    diffs["bank"] = max(_close(a, b) for a, b in zip(bank, out["attention_bank"]))
    ehs = model.null_context.expand(inp["x_t"].shape[0], -1, -1)
    for net, hint, key in ((model.global_control, "pose_hint", "pose_residuals"),
                           (model.local_control, "local_hint", "local_residuals")):
        down, mid = net(inp["x_t"], inp["t"], encoder_hidden_states=ehs, controlnet_cond=inp[hint], return_dict=False)
        assert len(down) + 1 == len(out[key]) == 10
        diffs[key] = max(_close(a, b) for a, b in zip([*down, mid], out[key]))
    eps_c = _eps(model, inp, True)
    eps_u = _eps(model, inp, False)               # no reference attention, no ControlNet residuals, temporal layers on
    diffs["eps_cond"] = _close(eps_c, out["eps_cond"])
    diffs["eps_uncond"] = _close(eps_u, out["eps_uncond"])
    diffs["eps_guided"] = _close(guide(eps_u, eps_c, 5.0), out["eps_guided"], ATOL_GUIDED)
    model.write_reference(inp["reference_latent_shared"][:1], t=inp["t"][:1])     # one reference for the clip
    diffs["eps_cond_shared_reference"] = _close(_eps(model, inp, True, torch.zeros(1, dtype=torch.long)),
                                                out["eps_cond_shared_reference"])
    print("max abs diffs:", json.dumps(diffs))
    model.bank.clear()
    # (the reference net's timestep cannot show here: with 32 channels in 32 groups, GroupNorm removes the per-channel
    # time embedding exactly; test_xportrait checks it on the tiny model)


@torch.no_grad()
def test_diffusers_temporal_placement_and_norm_do_not_match_the_official(reduced, golden, monkeypatch):
    """The two temporal choices are what makes ε match: diffusers' up-block placement (module before the Upsample)
    or its per-clip GroupNorm each move the unconditional ε far beyond the tolerance."""
    from lit_models.diffusion.networks import _SWAPPED_CLASSES

    model, _ = reduced
    inp, ref = golden["inputs"], golden["outputs"]["eps_uncond"]
    assert _close(_eps(model, inp, False), ref) < ATOL
    swapped = [m for m in model.denoiser.modules() if type(m) in _SWAPPED_CLASSES.values()]
    assert len(swapped) == 3 + 15                       # 3 up blocks, 15 motion modules
    for suffix in ("AfterUpsample", "PerFrameNorm"):
        with monkeypatch.context() as mp:
            for m in swapped:
                if type(m).__name__.endswith(suffix):
                    mp.setattr(m, "__class__", type(m).__mro__[1])      # the diffusers class
            assert (_eps(model, inp, False) - ref).abs().max() > 1e-2, suffix


def _fake_official(manifest: dict, cfg) -> dict[str, torch.Tensor]:
    """A stand-in for model_state-415001.th from the manifest: meta tensors (name, shape, dtype only), except where
    the importer reads values (the PE sinusoids, the DDPM schedule); a few keys fp16 as a released file may be."""
    from lit_models.diffusion.sampling import make_train_scheduler

    sched = make_train_scheduler(cfg)
    sd = {}
    for i, (k, e) in enumerate(manifest.items()):
        dtype = getattr(torch, e["dtype"])
        if k.endswith("pos_encoder.pe"):
            sd[k] = imp.sinusoid(e["shape"][1], e["shape"][2])
        elif k in imp.DDPM_BUFFERS:
            sd[k] = {"betas": sched.betas, "alphas_cumprod": sched.alphas_cumprod}.get(k, torch.zeros(e["shape"]))
        else:
            sd[k] = torch.empty(e["shape"], dtype=torch.float16 if dtype == torch.float32 and i % 2 else dtype,
                                device="meta")
    return sd


def test_full_size_meta_model_takes_every_manifest_key_through_the_cli(tmp_path, capsys):
    """`python -m lit_models.xportrait.import_official FILE --out X` on a manifest-generated stand-in of the released
    file: every key converted or checked/dropped, per-family counts as the README, each renamed key lands on the
    diffusers name the fixture records, and the output loads strictly into the full-size model built on meta."""
    entries = json.loads(need("checkpoint_keys.json").read_text())["files"]["checkpoint/model_state-415001.th"]["keys"]
    cfg = imp.model_config()
    src = tmp_path / "model_state-415001.th"
    torch.save({"state_dict": _fake_official(entries, cfg)}, src)
    out = tmp_path / "xportrait.ckpt"
    assert imp.main([str(src), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    rep = ckpt["official_import"]
    assert rep["source"]["sha256"] == imp.sha256_file(src) and len(rep["source"]["sha256"]) == 64
    assert {f: d["source_keys"] for f, d in rep["per_family"].items()} == MANIFEST_COUNTS
    assert printed["source_keys"] == rep["source_keys"] == 3082 == rep["converted"] + rep["checked_or_dropped"]
    assert len(rep["dropped"]) == 16 and all(".input_hint_block." in k for k in rep["dropped"])
    assert rep["per_family"]["motion"]["checked_or_dropped"] == 40                    # the pe buffers
    assert rep["model_keys_kept_at_init"] == [] and rep["model_keys_written"] == rep["model_keys"]
    ours = {"model.diffusion_model.": "denoiser.", "appearance_control_model.": "reference_net.",
            "pose_control_model.": "global_control.", "local_pose_control_model.": "local_control.",
            "first_stage_model.": "codec.vae."}
    for src_key, dst in rep["renamed"].items():
        prefix = next(p for p in ours if src_key.startswith(p))
        assert dst == ours[prefix] + entries[src_key]["diffusers"], src_key       # diffusers' names, as recorded
    with torch.device("meta"):
        model = build_model(ckpt["hyper_parameters"]["model"])
    model.load_state_dict(ckpt["state_dict"], strict=True, assign=True)
    assert ckpt["state_dict"]["codec.vae_weights_loaded"] == 1
    assert ckpt["state_dict"]["null_context"].shape == (1, 77, 768)


def test_importer_round_trip_loads_through_load_model(tmp_path, golden):
    """The reduced file through the CLI (fp16 source → fp32 checkpoint) and back through ``load_model``: every
    source tensor arrives unchanged under its converted name; keys of a family the source lacks are refused
    unless allowed, and a VAE that never came from a checkpoint refuses to run."""
    from lit_models.diffusion.networks import MissingWeightsError
    from lit_models.registry import load_model

    src = need("reduced_state_dict.pt")
    out = tmp_path / "reduced.ckpt"
    with pytest.raises(imp.OfficialImportError, match="vae"):
        imp.main([str(src), "--out", str(out), "--model", "xportrait_reduced"])
    imp.main([str(src), "--out", str(out), "--model", "xportrait_reduced", "--allow-missing", "vae,clip"])
    model = load_model(str(out))
    rep = torch.load(out, map_location="cpu", weights_only=False)["official_import"]
    sd = imp.load_official(src)
    assert {str(v.dtype) for v in sd.values()} == {"torch.float16", "torch.float32"}
    state = model.state_dict()
    assert len(rep["renamed"]) == 1882
    for s, d in rep["renamed"].items():
        assert state[d].dtype == torch.float32 and torch.equal(state[d], sd[s].float()), s
    with pytest.raises(MissingWeightsError, match="import_official"):
        model.encode(torch.zeros(1, 3, 64, 64))


def test_null_context_is_the_clip_text_of_the_empty_prompt():
    """The importer's null context: the checkpoint's CLIP text tower (LDM names, ``cond_stage_model.transformer.``)
    run on "" as FrozenCLIPEmbedder tokenises it (BOS, then EOS padding to 77), ``last_hidden_state``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu")
    clip = CLIPTextModel(cfg).eval()
    sd = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in clip.state_dict().items()}
    ctx = imp.clip_null_context({k: v.half() for k, v in sd.items()})             # fp16 source
    ids = torch.tensor([[49406] + [49407] * 76])
    with torch.no_grad():
        ref = CLIPTextModel(cfg).eval()
        ref.load_state_dict({k: v.half().float() for k, v in clip.state_dict().items()})
        expected = ref(input_ids=ids).last_hidden_state
        other = ref(input_ids=torch.tensor([[49406, 320] + [49407] * 75])).last_hidden_state    # "a"
    assert ctx.shape == (1, 77, 64) and ctx.dtype == torch.float32
    torch.testing.assert_close(ctx, expected)
    assert (ctx - other).abs().max() > 1e-3
