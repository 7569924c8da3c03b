"""Pre-flight: what the post-training evaluation needs, checked before the first training step.

``preflight(protocols, datamodule)`` checks, for the main protocol and every ``extra_eval`` one:

* the protocol composes against its schema (``EvalProtocolConfig``: no unknown key, right types, ``mode`` /
  ``resize`` / ``crop`` among their enums' values) and is coherent: the ArcFace model is known, every metric name
  resolves, mode=cross lists no full-reference metric;
* every configured metric's weights are present (and match the protocol's ``weights:`` pins): FID's Inception,
  FVD's I3D, LPIPS' trunk, the face backends' models — stand-ins (``standin_metrics``) need none;
* the evaluation set decodes with the CONFIGURED decoder (``data.decoder``; the dataset's own readers): the first and
  last frame each item reads of its source, driving and target clips.

Any failure raises ``PreflightError`` listing every problem (config keys, weight files with where to put them and
``python -m eval.weights fetch NAME``, clip paths with the decoder's error), so a run fails in seconds instead of
after its training steps. ``experiments/train.py`` calls it when ``evaluate_after_train`` is set.
"""
from __future__ import annotations

from typing import Any, Optional

from eval.protocol import EvalProtocolConfig

EXACT_METRICS = {"l1", "psnr", "ssim", "tdiff_l1", "fid", "fvd", "akd_gt", "akd_synthlm", "l1_contact",
                 "ssim_contact", "contact_rate"}
FULL_REFERENCE = {"l1", "psnr", "ssim", "tdiff_l1", "l1_contact", "ssim_contact"}
_LPIPS_TRUNK = {"alex": "alexnet_imagenet", "vgg": "vgg16_imagenet"}
_FACE_WEIGHTS = {("id", "arcface"): ["scrfd_det_10g", "arcface_w600k_r50"],
                 ("landmarks", "insightface"): ["scrfd_det_10g", "insightface_1k3d68"],
                 ("id", "dlib"): ["dlib_shape_predictor_68", "dlib_face_resnet_v1"],
                 ("landmarks", "dlib"): ["dlib_shape_predictor_68"],
                 ("landmarks", "fan"): ["s3fd", "fan2d"], ("id", "openface"): ["openface_nn4small2"]}


class PreflightError(RuntimeError):
    """The evaluation after training could not run: raised before training, listing every problem."""


def _where(key: str) -> str:
    return key if key.startswith("extra_eval") else f"eval_protocol{key[len('eval_protocol'):]}"


def check_protocol(proto, key: str = "eval_protocol") -> tuple[list[str], Any]:
    """(problems, the protocol merged against its schema)."""
    from omegaconf import OmegaConf

    problems: list[str] = []
    try:
        raw = OmegaConf.to_container(proto, resolve=True) if OmegaConf.is_config(proto) else dict(proto)
        merged = OmegaConf.merge(OmegaConf.structured(EvalProtocolConfig), raw)
    except Exception as err:  # noqa: BLE001 - the message names the key
        return [f"{key}: does not compose against the protocol schema: {err}".splitlines()[0]], None
    from eval.faces import ARCFACE_MODELS
    from eval.suite import factory_for

    if merged.arcface_model not in ARCFACE_MODELS:
        problems.append(f"{key}.arcface_model={merged.arcface_model!r} is not one of {', '.join(ARCFACE_MODELS)}")
    for name in merged.metrics:
        if factory_for(name) is None:
            problems.append(f"{key}.metrics: unknown metric {name!r}")
        if merged.mode == "cross" and (name in FULL_REFERENCE):
            problems.append(f"{key}.metrics: {name!r} needs ground truth, which mode=cross does not have")
    return problems, merged


def required_weights(protocol) -> list[str]:
    """Registry names of the weights the protocol's metrics load (stand-ins need none): each metric's factory in
    ``eval.suite``'s registry declares its own (``eval.suite.weights_for``)."""
    from eval.suite import weights_for

    standins = set(protocol.get("standin_metrics") or [])
    need: list[str] = []
    for name in protocol.metrics:
        need.extend(n for n in weights_for(name, protocol, standins) if n not in need)
    return need


def fid_weights(name, protocol, standins) -> list[str]:
    return [] if "fid" in standins else [str(protocol.fid_backend)]


def fvd_weights(name, protocol, standins) -> list[str]:
    return [] if "fvd" in standins else [str(protocol.get("fvd_backend", "i3d_torchscript"))]


def threedmm_weights(name, protocol, standins) -> list[str]:
    from eval.threedmm import required_weights as threedmm_required
    return list(threedmm_required(name, standins))


def lpips_weights(name, protocol, standins) -> list[str]:
    if "lpips" in standins:
        return []
    parts = name.split("_")
    net = parts[1] if len(parts) > 1 and parts[1] in _LPIPS_TRUNK else protocol.get("lpips_net", "alex")
    return [_LPIPS_TRUNK[net]]


def face_weights(name, protocol, standins) -> list[str]:
    """Identity / landmark backends: ArcFace (SCRFD + the protocol's recognition model), dlib, FAN, OpenFace."""
    from eval.faces import ARCFACE_MODELS, DEFAULT_ARCFACE_MODEL, arcface_model_of, split_face_name
    from eval.suite import _face_backend

    arcface_model = str(protocol.get("arcface_model", DEFAULT_ARCFACE_MODEL))
    fam, backend = split_face_name(name)
    kind = "landmarks" if fam in ("akd", "mkr") else "id"
    if backend is None:
        backend = _face_backend(kind, protocol.get("id_backend" if kind == "id" else "landmark_backend", "auto"),
                                arcface_model)
    if kind == "id" and (backend == "arcface" or backend.startswith("arcface_")):
        model = arcface_model if backend == "arcface" else arcface_model_of(backend)
        return ["scrfd_det_10g", ARCFACE_MODELS[model]]
    if backend in ("fan", "openface") and (backend in standins or any(
            m.endswith("_" + backend) and m in standins for m in protocol.metrics)):
        return []   # pose-evaluation stand-ins (eval.pose_eval): seeded networks, no file
    return list(_FACE_WEIGHTS.get((kind, backend), []))


def check_weights(protocol, key: str = "eval_protocol") -> list[str]:
    from eval.weights import REGISTRY, resolve

    problems = []
    pins = dict(protocol.get("weights") or {})
    for name in required_weights(protocol):
        if name not in REGISTRY:
            problems.append(f"{key}: unknown weight {name!r}")
            continue
        try:
            resolve(name, expected_sha256=pins.get(name))
        except Exception as err:  # noqa: BLE001 - missing file or hash mismatch: the message names the file
            first = str(err).splitlines()[0]
            problems.append(f"{key}: weights `{name}` for {REGISTRY[name].used_by}: {first} — "
                            f"`python -m eval.weights fetch {name}`")
    return problems


def check_decodable(datamodule, protocol, key: str = "eval_protocol", limit: int = 20) -> tuple[list[str], int]:
    """Decode the first and last frame every item of the protocol's set reads, with the dataset's readers (the
    configured decoder). Returns (problems, items checked)."""
    from eval.samples import eval_dataset

    try:
        ds = eval_dataset(datamodule, protocol)
    except Exception as err:  # noqa: BLE001 - e.g. no pairs file, empty split
        return [f"{key}: the evaluation set cannot be built: {type(err).__name__}: {err}"], 0
    items = getattr(ds, "items", None)
    readers = getattr(ds, "readers", None)
    if items is None or readers is None:
        return [], 0
    bad: dict[str, str] = {}
    decoder = getattr(getattr(datamodule, "cfg", None), "decoder", "?")
    for it in items:
        wanted = [(it.source, [it.source_index]), (it.driving, it.indices)]
        if it.target is not None:
            wanted.append((it.target, it.indices))
        for rec, idx in wanted:
            if rec.path in bad or not idx:
                continue
            try:
                readers.get(rec).get_frames(sorted({min(idx), max(idx)}))
            except Exception as err:  # noqa: BLE001 - named below
                bad[rec.path] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                readers.drop(rec)
    problems = [f"{key}: {path} does not decode with data.decoder={decoder}: {msg}"
                for path, msg in list(bad.items())[:limit]]
    if len(bad) > limit:
        problems.append(f"{key}: … and {len(bad) - limit} more clips that do not decode")
    return problems, len(items)


def preflight(protocols: dict[str, Any], datamodule: Optional[Any] = None, decode: bool = True) -> dict:
    """Check ``protocols`` ({config key: protocol}, e.g. ``{"eval_protocol": cfg.eval_protocol,
    "extra_eval.cross": …}``) against ``datamodule``; raise ``PreflightError`` listing every problem, else return
    what was checked."""
    problems: list[str] = []
    report: dict = {"protocols": {}, "weights": [], "items_decoded": 0}
    for key, proto in protocols.items():
        found, merged = check_protocol(proto, key)
        problems += found
        if merged is None:
            continue
        problems += check_weights(merged, key)
        report["weights"] += [w for w in required_weights(merged) if w not in report["weights"]]
        if decode and datamodule is not None:
            found, n = check_decodable(datamodule, merged, key)
            problems += found
            report["items_decoded"] += n
        report["protocols"][key] = str(merged.name)
    if problems:
        raise PreflightError("pre-flight failed (nothing was trained):\n  " + "\n  ".join(problems))
    return report


def protocols_of(cfg) -> dict[str, Any]:
    """{config key: protocol} of a run config: the main protocol and every ``extra_eval`` one."""
    out = {"eval_protocol": cfg.eval_protocol}
    for name, proto in (cfg.get("extra_eval") or {}).items():
        out[f"extra_eval.{name}"] = proto
    return out
