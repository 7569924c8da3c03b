"""Official X-Portrait preprocessing (core/test_xportrait.py @ be4d60b, unmodified) on a real clip, with a
recording stand-in for face_alignment's FAN (dlib's 68 landmarks on the same 256² uint8 images, via portraitlab's
datamodules.face; the central 80% square as the box when dlib's HOG finds none). Writes preprocess_official.npz."""
import hashlib, importlib.util, sys, types
import numpy as np
import torch

REPO = "/work/wt/xportrait"
OFF = "/work/scratch/official/X-Portrait"
sys.path[:0] = [OFF, REPO]
# import-only stubs for the script's training / video imports the preprocessing does not use
for name, attrs in {"ema_pytorch": {"EMA": None}, "decord": {"VideoReader": None, "cpu": None, "gpu": None},
                    "model_lib.ControlNet.cldm.model": {"create_model": None}, "einops": {"rearrange": None},
                    "utils.utils": {"set_seed": None, "count_param": None, "print_peak_memory": None}}.items():
    sys.modules[name] = types.SimpleNamespace(**attrs)
spec = importlib.util.spec_from_file_location("official_test_xportrait", f"{OFF}/core/test_xportrait.py")
X = importlib.util.module_from_spec(spec)
spec.loader.exec_module(X)

from datamodules.face import get_face_detector            # noqa: E402
from experiments.animate import read_image, read_video    # noqa: E402

det = get_face_detector("dlib")


class RecordingFA:
    def __init__(self):
        self.calls = []

    def get_landmarks_from_image(self, img, return_landmark_score=False):
        assert img.dtype == np.uint8 and img.shape == (256, 256, 3), (img.dtype, img.shape)
        box = det.largest(img)
        # stand-in for FAN (always finds the face): dlib's 68-point predictor on dlib's box, or on the central
        # 80% square when HOG finds no face (faces filling a 256² frame)
        box = box if box is not None else [25.6, 25.6, 230.4, 230.4]
        lm = det.landmarks68(img, box).astype(np.float32)
        self.calls.append((hashlib.md5(np.ascontiguousarray(img).tobytes()).hexdigest(), lm))
        return None if lm is None else [lm]


FIX = "/work/shared/fixtures/real"
source = read_image(f"{FIX}/portraits/single_face.jpg")
drv, _ = read_video(f"{FIX}/clips/talkinghead1kh_r0c0.mp4", 4)
driving = list(drv)
out = {"source_input_shape": np.array(source.shape), "driving_input_shape": np.array(drv.shape)}

fa = RecordingFA()
ld, hd = X.adjust_driving_video_to_src_image(source, driving, fa, 256, 512, best_frame=0)
driving_hd = torch.tensor(np.array(hd).astype(np.float32)).permute(0, 3, 1, 2)
local = []
for i in range(len(driving_hd)):
    r = X.extract_local_feature_from_single_img(driving_hd[i], fa, target_res=512)
    if isinstance(r, tuple):
        print("calls", [c[1] is not None for c in fa.calls]); import imageio; imageio.imwrite("warped.png", (hd[i]*255).astype(np.uint8)); raise SystemExit(1)
    local.append(r.numpy())
src_hd = X.resize(source, (512, 512))[..., :3]
q = lambda x: np.clip(np.round(x * 255), 0, 255).astype(np.uint8)   # noqa: E731
out["source_hd_u8"] = q(src_hd)
out["driving_hd_u8"] = q(driving_hd.permute(0, 2, 3, 1).numpy())
out["local_u8"] = q((np.stack(local).transpose(0, 2, 3, 1) + 1) / 2)
out["call_md5"] = np.array([c[0] for c in fa.calls])
out["call_found"] = np.array([c[1] is not None for c in fa.calls])
out["call_landmarks"] = np.stack([c[1] if c[1] is not None else np.full((68, 2), np.nan, np.float32) for c in fa.calls])

fa2 = RecordingFA()                                          # best_frame = -1: chosen by landmarks
src256 = X.img_as_ubyte(X.resize(source[..., :3], (256, 256)))
out["best_frame_auto"] = np.array(X.find_best_frame_byheadpose_fa(src256, driving, fa2))
out["best_call_md5"] = np.array([c[0] for c in fa2.calls])
out["best_call_landmarks"] = np.stack([c[1] if c[1] is not None else np.full((68, 2), np.nan, np.float32)
                                       for c in fa2.calls])
np.savez_compressed(sys.argv[1], **out)
print({k: (v.shape, v.dtype) for k, v in out.items()}, "calls", len(fa.calls), "best", out["best_frame_auto"])
