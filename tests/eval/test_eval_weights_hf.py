"""CLIP / DINOv2 registry entries (Hugging Face repositories): absent → a named error; a local folder via the env
override → loaded with transformers' from_pretrained (a tiny randomly initialised config written here)."""
from __future__ import annotations

import pytest

from eval.weights import REGISTRY, MissingWeightsError, hf_from_pretrained, resolve


@pytest.mark.parametrize("name,repo,env", [("clip_vit_large_patch14", "openai/clip-vit-large-patch14", "PORTRAITLAB_CLIP"),
                                           ("dinov2_base", "facebook/dinov2-base", "PORTRAITLAB_DINOV2")])
def test_absent_hf_model_is_a_named_error(name, repo, env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(env, str(tmp_path / "nothing_here"))
    assert REGISTRY[name].is_repo and not REGISTRY[name].present()
    with pytest.raises(MissingWeightsError) as err:
        resolve(name)
    msg = str(err.value)
    assert repo in msg and env in msg and "config.json" in msg and f"huggingface.co/{repo}" in msg


def test_local_folder_override_resolves_and_pins(tmp_path, monkeypatch):
    from eval.weights import sha256_file

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setenv("PORTRAITLAB_CLIP", str(folder))
    assert not REGISTRY["clip_vit_large_patch14"].present()          # config without weights is not a model
    (folder / "model.safetensors").write_bytes(b"weights")
    assert REGISTRY["clip_vit_large_patch14"].present() and resolve("clip_vit_large_patch14") == folder
    assert resolve("clip_vit_large_patch14", sha256_file(folder / "model.safetensors")) == folder
    with pytest.raises(ValueError, match="sha256"):
        resolve("clip_vit_large_patch14", expected_sha256="0" * 64)


@pytest.mark.slow
def test_local_folder_override_loads_with_transformers(tmp_path, monkeypatch):
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path / "dinov2"
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=28, patch_size=14)).save_pretrained(folder)
    monkeypatch.setenv("PORTRAITLAB_DINOV2", str(folder))
    assert REGISTRY["dinov2_base"].present() and resolve("dinov2_base") == folder
    model = hf_from_pretrained("dinov2_base", Dinov2Model)
    assert model.config.hidden_size == 16
