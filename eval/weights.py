"""One registry of every pretrained weight file the evaluation suite uses.

Each entry names the file, its sha256 (or the sha256 prefix a library embeds in the file name, with a note), the
library cache path where the library itself looks for it, the URL the library would download it from, and an
environment variable that overrides the location. Nothing is downloaded here: a missing file is an error naming the
file, the path to put it in and the URL. ``python -m eval.weights check`` lists what is present and what is not.

Stand-in networks (random weights) are never looked up here: a config must name them explicitly and their metric
names carry ``_STANDIN`` (see ``eval.metrics``).
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


def _torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _insightface_root() -> Path:
    return Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface")) / "models"


def _face_recognition_models() -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition_models

    return Path(face_recognition_models.__file__).parent / "models"


@dataclass(frozen=True)
class WeightFile:
    name: str                   # registry key (what protocols pin under `weights:`)
    filename: str
    cache: str                  # "torch_hub" | "insightface:<pack>" | "face_recognition_models"
    url: str
    env: str                    # environment variable holding an explicit path (wins over the cache)
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None   # torch hub names embed the first hex digits of the sha256
    note: str = ""
    used_by: str = ""

    def cache_dir(self) -> Path:
        if self.cache == "torch_hub":
            return _torch_hub_checkpoints()
        if self.cache.startswith("insightface:"):
            return _insightface_root() / self.cache.split(":", 1)[1]
        if self.cache == "face_recognition_models":
            return _face_recognition_models()
        raise ValueError(f"unknown cache kind {self.cache!r}")

    def path(self) -> Path:
        """Where the file is looked for: ``$<env>`` when set, else the library's own cache."""
        override = os.environ.get(self.env)
        return Path(override) if override else self.cache_dir() / self.filename

    def present(self) -> bool:
        return self.path().is_file()


REGISTRY: dict[str, WeightFile] = {w.name: w for w in [
    WeightFile(
        name="inception_v3_2015_12_05", filename="weights-inception-2015-12-05-6726825d.pth", cache="torch_hub",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        env="PORTRAITLAB_INCEPTION", sha256_prefix="6726825d",
        note="torch-fidelity's port of TF's 2015-12-05 Inception (the FID reference network)", used_by="fid"),
    WeightFile(
        name="alexnet_imagenet", filename="alexnet-owt-7be5be79.pth", cache="torch_hub",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        env="PORTRAITLAB_ALEXNET", sha256_prefix="7be5be79",
        note="torchvision AlexNet IMAGENET1K_V1, the LPIPS 'alex' trunk", used_by="lpips_alex"),
    WeightFile(
        name="vgg16_imagenet", filename="vgg16-397923af.pth", cache="torch_hub",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        env="PORTRAITLAB_VGG16", sha256_prefix="397923af",
        note="torchvision VGG16 IMAGENET1K_V1, the LPIPS 'vgg' trunk", used_by="lpips_vgg"),
    WeightFile(
        name="arcface_w600k_r50", filename="w600k_r50.onnx", cache="insightface:buffalo_l",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        env="PORTRAITLAB_ARCFACE", sha256=None,
        note="sha256 not pinned here (no trusted copy on this machine); pin it in the protocol's `weights:`",
        used_by="id_arcface, aed_arcface"),
    WeightFile(
        name="scrfd_det_10g", filename="det_10g.onnx", cache="insightface:buffalo_l",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        env="PORTRAITLAB_SCRFD", sha256=None,
        note="insightface buffalo_l detector (5-point keypoints for norm_crop); sha256 not pinned here",
        used_by="id_arcface, aed_arcface, akd_insightface"),
    WeightFile(
        name="insightface_1k3d68", filename="1k3d68.onnx", cache="insightface:buffalo_l",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        env="PORTRAITLAB_IF_LMK68", sha256=None,
        note="insightface buffalo_l 68-point landmarks; sha256 not pinned here", used_by="akd_insightface, mkr_insightface"),
    WeightFile(
        name="dlib_shape_predictor_68", filename="shape_predictor_68_face_landmarks.dat", cache="face_recognition_models",
        url="https://pypi.org/project/face-recognition-models/0.3.0/", env="PORTRAITLAB_DLIB_LMK68",
        sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        note="ships in the face-recognition-models 0.3.0 wheel", used_by="akd_dlib, mkr_dlib, id_dlib"),
    WeightFile(
        name="dlib_face_resnet_v1", filename="dlib_face_recognition_resnet_model_v1.dat",
        cache="face_recognition_models", url="https://pypi.org/project/face-recognition-models/0.3.0/",
        env="PORTRAITLAB_DLIB_FACE_RESNET", sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        note="ships in the face-recognition-models 0.3.0 wheel (128-d embedding)",
        used_by="id_dlib, aed_dlib"),
]}


class MissingWeightsError(FileNotFoundError):
    pass


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve(name: str, expected_sha256: Optional[str] = None, verify: bool = False) -> Path:
    """Return the path of weight ``name``; raise naming the file, where to put it and its URL when absent.

    ``expected_sha256`` (a protocol's pin) is always checked; ``verify`` also checks the registry's own hash/prefix.
    """
    if name not in REGISTRY:
        raise KeyError(f"unknown weight {name!r}; known: {sorted(REGISTRY)}")
    w = REGISTRY[name]
    path = w.path()
    if not path.is_file():
        raise MissingWeightsError(
            f"weight file `{w.filename}` ({w.name}, used by {w.used_by}) not found at {path}.\n"
            f"  Put it there (or set ${w.env}=/path/to/{w.filename}); the library downloads it from:\n  {w.url}")
    if expected_sha256 or verify:
        digest = sha256_file(path)
        want = expected_sha256 or w.sha256
        if want and digest != want:
            raise ValueError(f"{path}: sha256 {digest} does not match the pinned {want}")
        if verify and not want and w.sha256_prefix and not digest.startswith(w.sha256_prefix):
            raise ValueError(f"{path}: sha256 {digest} does not start with {w.sha256_prefix} (from its file name)")
    return path


def check() -> list[tuple[str, bool, Path]]:
    """(name, present, path) for every registered weight."""
    return [(w.name, w.present(), w.path()) for w in REGISTRY.values()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check":
        print("usage: python -m eval.weights check [--hash]")
        return 2
    missing = 0
    print("portraitlab evaluation weights (nothing is downloaded; put absent files at the path shown)\n")
    for w in REGISTRY.values():
        ok = w.present()
        missing += not ok
        pin = w.sha256 or (f"sha256 prefix {w.sha256_prefix}" if w.sha256_prefix else "sha256 not pinned")
        if ok and "--hash" in argv:
            digest = sha256_file(w.path())
            want = w.sha256 or w.sha256_prefix
            pin = digest + ("" if not want else ("  OK" if digest.startswith(want) else "  MISMATCH"))
        print(f"{'present' if ok else 'ABSENT ':8} {w.name:<24} {w.path()}")
        print(f"{'':8} {'':<24} used by {w.used_by}; {pin}; ${w.env}")
        if not ok:
            print(f"{'':8} {'':<24} download: {w.url}")
    print(f"\n{len(REGISTRY) - missing}/{len(REGISTRY)} present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
