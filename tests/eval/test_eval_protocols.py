"""Protocol YAMLs (compose against the schema, hash every pinned knob, pairs sha256) and the weights registry."""
from __future__ import annotations

import pytest

from eval.protocol import load_protocol, protocol_hash, verify_protocol

PROTOCOLS = ["synthfaces_self", "synthfaces_cross", "synthfaces_hands", "vox_self", "vox_cross",
             "fomm_reconstruction", "mrfa_reconstruction", "xnemo_self", "xnemo_cross", "xportrait_self",
             "xportrait_cross"]


@pytest.mark.parametrize("name", PROTOCOLS)
def test_protocol_composes_through_hydra(name, compose_cfg):
    cfg = compose_cfg("evaluate", [f"eval_protocol={name}", "model=copy_source"])
    assert cfg.eval_protocol.name == name
    # the standalone loader gives the same protocol (same hash) as the Hydra composition
    assert protocol_hash(cfg.eval_protocol) == protocol_hash(load_protocol(name))


def test_mistyped_protocol_key_fails_at_compose(compose_cfg):
    with pytest.raises(Exception, match="num_frame"):
        compose_cfg("evaluate", ["eval_protocol=synthfaces_self", "eval_protocol.num_frame=3"])


@pytest.mark.parametrize("override", ["num_frames=8", "stride=2", "resolution=128", "resize=bicubic", "metrics=[l1]",
                                      "id_backend=dlib", "fid_num_samples=100", "max_videos=3",
                                      "contact_radius=5", "contact_crop=32", "model_resolution=512",
                                      "pred_uint8=floor"])
def test_every_pinned_knob_changes_the_hash(override):
    assert protocol_hash(load_protocol("synthfaces_self", [override])) != protocol_hash(load_protocol("synthfaces_self"))


def test_pairs_sha256_checked(tmp_path):
    from eval.weights import sha256_file

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("source,driving\na.mp4,b.mp4\n")
    good = load_protocol("vox_cross", [f"pairs_csv={pairs}", f"pairs_sha256={sha256_file(pairs)}"])
    assert verify_protocol(good)["pairs_sha256_observed"] == sha256_file(pairs)
    with pytest.raises(ValueError, match="sha256"):
        verify_protocol(load_protocol("vox_cross", [f"pairs_csv={pairs}", "pairs_sha256=" + "0" * 64]))
    with pytest.warns(UserWarning, match="not pinned"):
        verify_protocol(load_protocol("vox_cross", [f"pairs_csv={pairs}"]))


def test_weights_registry_env_override_and_check(tmp_path, monkeypatch, capsys):
    from eval import weights

    f = tmp_path / "my_inception.pth"
    f.write_bytes(b"not really weights")
    monkeypatch.setenv("PORTRAITLAB_INCEPTION", str(f))
    assert weights.resolve("inception_v3_2015_12_05") == f
    with pytest.raises(ValueError, match="does not start with 6726825d"):
        weights.resolve("inception_v3_2015_12_05", verify=True)
    with pytest.raises(ValueError, match="pinned"):
        weights.resolve("inception_v3_2015_12_05", expected_sha256="0" * 64)
    # dlib's models ship in the wheel: always present
    status = {name: ok for name, ok, _ in weights.check()}
    assert status["dlib_face_resnet_v1"] and status["dlib_shape_predictor_68"] and status["inception_v3_2015_12_05"]
    assert weights.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "dlib_face_resnet_v1" in out


def test_suite_names_carry_backend_and_standin_label(tmp_path, monkeypatch):
    from eval.suite import build_suite
    from eval.weights import MissingWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))   # no real AlexNet / Inception here
    monkeypatch.delenv("PORTRAITLAB_INCEPTION", raising=False)
    proto = load_protocol("synthfaces_self", ["metrics=[l1,fid,id,akd]", "standin_metrics=[fid]",
                                              "id_backend=dlib", "landmark_backend=dlib"])
    suite = build_suite(proto)
    assert suite.names == ["l1", "id_dlib", "akd_dlib", "fid_STANDIN"] and suite.standin
    with pytest.raises(MissingWeightsError, match="weights-inception"):
        build_suite(load_protocol("synthfaces_self", ["metrics=[fid]"]))   # never a silent stand-in
    with pytest.raises(ValueError, match="unknown metric"):
        build_suite(load_protocol("synthfaces_self", ["metrics=[fdi]"]))


def test_new_fields_at_their_neutral_default_keep_earlier_hashes():
    """``model_resolution: null`` and ``pred_uint8: round`` reproduce what protocols computed before these fields
    existed, so they are left out of the hash (vox_self's hash stays the one its recorded results carry)."""
    assert protocol_hash(load_protocol("vox_self")) == protocol_hash(load_protocol("vox_self", ["model_resolution=null"]))
    assert protocol_hash(load_protocol("vox_self")).startswith("eaa868727eb9")


@pytest.mark.parametrize("name", ["xnemo_self", "xnemo_cross", "xportrait_self", "xportrait_cross"])
def test_diffusion_protocols_run_the_model_at_512(name):
    p = load_protocol(name)
    assert p.model_resolution == 512 and p.resolution == 512
