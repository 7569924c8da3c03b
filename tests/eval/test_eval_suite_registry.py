"""eval.suite: metric names resolve through the name → factory registry (exact names, then families), unknown names
fail naming the key and the choices, and the 3DMM names are built by ``eval.threedmm.build_threedmm_metric``."""
from __future__ import annotations

import pytest

from eval import suite as S
from eval.metrics import L1, Metric
from eval.protocol import load_protocol


def test_exact_names_resolve_before_their_family():
    # akd_gt / aed_3dmm_deep3d start with a face family's name but have factories of their own
    assert S.factory_for("akd_gt") is S.METRIC_FACTORIES["akd_gt"] is not S.FAMILY_FACTORIES["akd"]
    assert S.factory_for("aed_3dmm_deep3d") is S.METRIC_FACTORIES["aed_3dmm_deep3d"]
    assert S.factory_for("lpips_vgg_official") is S.factory_for("lpips") is S.FAMILY_FACTORIES["lpips"]
    assert S.factory_for("id_to_driver_dlib") is S.factory_for("akd") is S.FAMILY_FACTORIES["id"]
    assert S.factory_for("l2") is None and S.factory_for("fdi") is None


def test_unknown_metric_names_the_key_and_the_choices():
    with pytest.raises(ValueError) as err:
        S.build_suite(load_protocol("synthfaces_self", ["metrics=[l1,l2]"]))
    msg = str(err.value)
    assert "unknown metric 'l2'" in msg and "eval_protocol.metrics" in msg
    assert all(n in msg for n in ("l1", "psnr", "fid", "fvd", "aed_3dmm_deep3d", "lpips[_...]", "id[_...]"))


def test_threedmm_names_are_built_by_eval_threedmm(monkeypatch):
    import eval.threedmm

    calls = []

    class Fake(Metric):
        def __init__(self, name):
            self.name, self.facts = name, {}

    def build(name, protocol, pins, device="cpu"):
        calls.append((name, protocol.name, pins, str(device)))
        return Fake(name)

    monkeypatch.setattr(eval.threedmm, "build_threedmm_metric", build)
    proto = load_protocol("synthfaces_self", ["metrics=[l1,apd_3dmm_deep3d,pose_deg_deep3d]"])
    suite = S.build_suite(proto, device="cpu")
    assert suite.names == ["l1", "apd_3dmm_deep3d", "pose_deg_deep3d"] and isinstance(suite.frame_metrics[0], L1)
    assert calls == [("apd_3dmm_deep3d", "synthfaces_self", {}, "cpu"), ("pose_deg_deep3d", "synthfaces_self", {}, "cpu")]


def test_lpips_names_share_one_network_per_net():
    proto = load_protocol("synthfaces_self", ["metrics=[lpips_vgg,lpips_vgg_official,lpips_vgg_contact,lpips_alex]",
                                              "standin_metrics=[lpips]"])
    suite = S.build_suite(proto)
    vgg, official, alex, contact = suite.frame_metrics
    assert [vgg.name, official.name, alex.name, contact.name] == [
        "lpips_vgg_STANDIN", "lpips_vgg_official_STANDIN", "lpips_alex_STANDIN", "lpips_vgg_contact_STANDIN"]
    assert official.model is vgg.model and contact.lpips is vgg and alex.model is not vgg.model
