"""The weights registry knows the model weights too (released checkpoints, pretrained networks), and every eval CLI
answers --help with exit status 0."""
from __future__ import annotations

import subprocess
import sys

import pytest

from eval import weights


MODEL_WEIGHTS = ["mrfa_vox", "xportrait", "xnemo_reference_unet", "xnemo_denoising_unet", "xnemo_temporal_module",
                 "xnemo_motion_encoder", "sd15", "sd_image_variations", "svd_xt_vae", "sd21_base", "vgg19_imagenet",
                 "blazeface", "s3fd", "fan2d", "openface_nn4small2"]


@pytest.mark.parametrize("name", MODEL_WEIGHTS)
def test_every_model_weight_has_url_integrity_and_licence(name):
    w = weights.REGISTRY[name]
    assert w.url.startswith("https://") and w.licence and w.used_by
    assert weights.integrity(w) in ("pinned", "prefix", "recorded", "hf")


def test_xnemo_weights_are_cc_by_nc_and_the_alias_names_all_four():
    assert weights.ALIASES["xnemo"] == [n for n in MODEL_WEIGHTS if n.startswith("xnemo_")]
    assert all("CC BY-NC" in weights.REGISTRY[n].licence for n in weights.ALIASES["xnemo"])
    assert weights.REGISTRY["svd_xt_vae"].filename == "stabilityai/stable-video-diffusion-img2vid-xt"
    assert weights.REGISTRY["svd_xt_vae"].subfolder == "vae"


def test_face_alignment_file_names_are_the_packages(monkeypatch):
    """``s3fd`` / ``fan2d`` are the files face_alignment 1.5.0 itself loads from the torch hub cache."""
    from face_alignment import api
    from face_alignment.detection.sfd import sfd_detector

    assert weights.REGISTRY["s3fd"].url == sfd_detector.models_urls["s3fd"]
    assert weights.REGISTRY["fan2d"].url == api.models_urls["2DFAN-4"]
    assert weights.REGISTRY["s3fd"].cache == weights.REGISTRY["fan2d"].cache == "torch_hub"


def test_fetch_knows_the_model_weights_and_says_how_to_get_manual_ones(tmp_path, monkeypatch, capsys):
    """``fetch mrfa_vox xnemo`` (Google Drive: no direct link) fails per file naming the URL and the path to put it
    at; a file put there by hand is then 'fetched' and its sha256 recorded."""
    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path))
    assert weights.main(["fetch", "mrfa_vox", "xnemo"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED") == 5 and "drive.google.com/file/d/1QpLCOmAXhQbEoaShlzXZwp6qw_q6sxgO" in out
    assert str(tmp_path / "weights" / "mrfa_vox" / "vox.pth.tar") in out
    p = tmp_path / "weights" / "mrfa_vox" / "vox.pth.tar"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"released checkpoint")
    assert weights.main(["fetch", "mrfa_vox"]) == 0
    assert weights.recorded_sha256("mrfa_vox") == weights.sha256_file(p)
    p.write_bytes(b"another file")   # a later resolve verifies the recorded hash
    with pytest.raises(ValueError, match="recorded"):
        weights.resolve("mrfa_vox")


def test_unknown_name_and_missing_file_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path))
    with pytest.raises(weights.MissingWeightsError, match="(?s)model_state-415001.th.*by hand.*drive.google.com"):
        weights.resolve("xportrait")


@pytest.mark.parametrize("argv", [["--help"], ["fetch", "--help"], ["check", "-h"], ["list", "--help"]])
def test_weights_help_exits_0(argv, capsys):
    assert weights.main(argv) == 0
    assert "usage: python -m eval.weights" in capsys.readouterr().out


def test_weights_list_prints_licences(capsys):
    assert weights.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "CC BY-NC 4.0" in out and "svd_xt_vae" in out and "[vae/]" in out


@pytest.mark.parametrize("module", ["eval.weights", "eval.table", "eval.synth_landmarks", "eval.synth_identity",
                                    "eval.report", "benchmarks.eval_suite"])
def test_eval_cli_help_exits_0(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower()


def test_subfolder_entry_resolves_to_the_folder_inside_the_snapshot(tmp_path, monkeypatch):
    """``svd_xt_vae`` is only ``vae/`` of the SVD-xt repository: present when that folder holds config.json and
    weights, and ``resolve`` returns the folder (what ``AutoencoderKLTemporalDecoder.from_pretrained`` reads)."""
    monkeypatch.delenv("PORTRAITLAB_SVD_XT_VAE", raising=False)
    monkeypatch.setattr(weights, "_hf_snapshot", lambda repo: tmp_path)
    w = weights.REGISTRY["svd_xt_vae"]
    assert not w.present()
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    assert not w.present()
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert w.present() and weights.resolve("svd_xt_vae") == tmp_path / "vae"
