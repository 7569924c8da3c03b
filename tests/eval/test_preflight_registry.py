"""eval.preflight.required_weights reads each metric factory's own weights declaration (eval.suite registry)."""
from omegaconf import OmegaConf

from eval import suite
from eval.preflight import required_weights
from eval.protocol import load_protocol


def test_every_registered_factory_declares_its_weights():
    factories = {*suite.METRIC_FACTORIES.values(), *suite.FAMILY_FACTORIES.values()}
    assert factories and all(fn in suite.FACTORY_WEIGHTS for fn in factories)


def _proto(**kw):
    return OmegaConf.merge(load_protocol("synthfaces_self"), kw)


def test_required_weights_follow_the_protocol_knobs():
    assert required_weights(_proto(metrics=["lpips"], lpips_net="vgg")) == ["vgg16_imagenet"]
    assert required_weights(_proto(metrics=["lpips_alex"], lpips_net="vgg")) == ["alexnet_imagenet"]
    assert required_weights(_proto(metrics=["lpips"], standin_metrics=["lpips"])) == []
    assert required_weights(_proto(metrics=["id_arcface"])) == ["scrfd_det_10g", "arcface_w600k_r50"]
    assert required_weights(_proto(metrics=["id_dlib"])) == ["dlib_shape_predictor_68", "dlib_face_resnet_v1"]
    assert required_weights(_proto(metrics=["fid"], standin_metrics=["fid"])) == []
    assert required_weights(_proto(metrics=["psnr", "ssim", "akd_gt"])) == []


def test_a_new_family_is_preflighted_from_its_declaration(monkeypatch):
    monkeypatch.setattr(suite, "METRIC_FACTORIES", dict(suite.METRIC_FACTORIES))
    monkeypatch.setattr(suite, "FACTORY_WEIGHTS", dict(suite.FACTORY_WEIGHTS))
    suite.metric("toy_metric", weights=lambda name, protocol, standins: [] if name in standins else ["toy_w"])(
        lambda b, name: None)
    assert required_weights(_proto(metrics=["toy_metric", "psnr"])) == ["toy_w"]
    assert required_weights(_proto(metrics=["toy_metric"], standin_metrics=["toy_metric"])) == []
