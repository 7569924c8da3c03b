"""Official X-NeMo preprocessing on a real clip (x-nemo-inference@acaa1d0 scripts/pose2vid_xnemo.py main()):
BlazeFace (mediapipe 0.10.11, blaze_face_short_range.tflite from the checkout) on the reference (image mode) and on
each driving frame's left square (video mode, timestamps += int(1000/fps)), then the script's own geometry functions
(scale_bb, get_bbox_from_center, crop_bbox_from_frames, gaussian_filter1d) in main()'s order, and the pipeline's
VaeImageProcessor resizes (224 for motion crops and the reference's pose crop, 512 for the reference).
Shim: a stub `decord` module (the script imports VideoReader at module level; frames are read with PyAV rgb24 here)."""
import os, sys, types
import numpy as np
OFF = "/work/scratch/official/x-nemo-inference"
sys.path.insert(0, OFF)
import importlib.machinery
_decord = types.ModuleType("decord"); _decord.VideoReader = None
_decord.__spec__ = importlib.machinery.ModuleSpec("decord", None)
sys.modules["decord"] = _decord
os.chdir(OFF)                      # the script opens 'blaze_face_short_range.tflite' relative to the checkout
import av, cv2, torch
import mediapipe as mp
from PIL import Image
from scipy.ndimage import gaussian_filter1d
from diffusers.image_processor import VaeImageProcessor
from scripts.vid2pose import extract_bbox_mp
from scripts.pose2vid_xnemo import scale_bb, get_bbox_from_center, crop_bbox_from_frames

mode, out_path, clip_path, ref_path = sys.argv[1:5]
KEEP = [int(k) for k in os.environ.get("KEEP", "0,10,35,71").split(",")]
ref_img = cv2.cvtColor(cv2.imread(ref_path), cv2.COLOR_BGR2RGB)
with av.open(clip_path) as c:
    s = c.streams.video[0]
    fps = float(s.average_rate)
    control = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
img_detector = mp.tasks.vision.FaceDetector.create_from_options(mp.tasks.vision.FaceDetectorOptions(
    base_options=mp.tasks.BaseOptions(model_asset_path='blaze_face_short_range.tflite')))
# ---- reference (main(): ref_pose crop, then the 512 crop)
ref_bbox = extract_bbox_mp(ref_img, None, img_detector)
left, top, right, bot = scale_bb(ref_bbox, scale=1.1, size=ref_img.shape[:2])
ref_pose_image = ref_img.copy()[int(top):int(bot), int(left):int(right)]
ref_pose_pil = Image.fromarray(ref_pose_image).convert("RGB")
ref_crop = crop_bbox_from_frames([ref_img], ref_bbox, min_frames=0, min_size=0, increase_area=0.5, enable_oob=True)[1][0]
ref_image_pil = Image.fromarray(ref_crop).convert("RGB")
# ---- driving (main(): video-mode detector, frame-0 scaled fixed length, smoothed centres)
detector = mp.tasks.vision.FaceDetector.create_from_options(mp.tasks.vision.FaceDetectorOptions(
    base_options=mp.tasks.BaseOptions(model_asset_path='blaze_face_short_range.tflite'),
    running_mode=mp.tasks.vision.RunningMode.VIDEO))
timestamp_ms, centres, raw_boxes, fix_length = 0, [], [], None
for i in range(control.shape[0]):
    pose_image = control[i][:, : control[0].shape[0]]
    timestamp_ms += int(1000 / fps)
    bbox = extract_bbox_mp(pose_image, None, detector, timestamp_ms)
    raw_boxes.append(np.asarray(bbox, dtype=np.float64))
    if i == 0:
        bbox = scale_bb(bbox, scale=1.1, size=pose_image.shape[:2])
        fix_length = (round(bbox[2] - bbox[0]) // 2 * 2, round(bbox[3] - bbox[1]) // 2 * 2)
    l, t, r, b = bbox
    centres.append([(l + r) * 0.5, (t + b) * 0.5])
centres = gaussian_filter1d(np.asarray(centres, dtype=np.float32), sigma=5.0, axis=0).tolist()
crop_boxes, pose_images = [], []
for i in range(control.shape[0]):
    pose_image = control[i][:, : control[0].shape[0]]
    bbox = get_bbox_from_center(centres[i], fix_length, pose_image.shape[:2])
    crop_boxes.append(np.asarray(bbox, dtype=np.float64))
    l, t, r, b = bbox
    pose_images.append(Image.fromarray(pose_image[int(t):int(b), int(l):int(r)]).convert("RGB"))
# ---- the pipeline's processors
cond = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=True)
refp = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True)
def u8(x):                               # [-1, 1] tensor (1,3,h,w) -> uint8 h,w,3 (exact: values are k/255)
    v = ((x[0].permute(1, 2, 0).double() + 1) / 2 * 255)
    assert float((v - v.round()).abs().max()) < 1e-3
    return v.round().to(torch.uint8).numpy()
motion = [u8(cond.preprocess(pose_images[i], height=224, width=224)) for i in KEEP]
ref_motion = u8(cond.preprocess(ref_pose_pil, height=224, width=224))
reference = u8(refp.preprocess(ref_image_pil, height=512, width=512))
# the reference crop's out-of-frame handling on given boxes (real detections above stay inside the frame):
# top-left corner (shift fails: padding), left edge mid-height (horizontal shift), bottom edge (vertical shift)
H0, W0 = ref_img.shape[:2]
oob_boxes = np.array([[5, 5, 5 + 0.3 * W0, 5 + 0.35 * H0], [2, 0.4 * H0, 2 + 0.2 * W0, 0.6 * H0],
                      [0.4 * W0, 0.75 * H0, 0.6 * W0, 0.98 * H0]]).round()
oob_crops = [u8(refp.preprocess(Image.fromarray(crop_bbox_from_frames([ref_img], b, min_frames=0, min_size=0,
             increase_area=0.5, enable_oob=True)[1][0]).convert("RGB"), height=512, width=512)) for b in oob_boxes]
res = {"oob_boxes": oob_boxes, "oob_reference_crops": np.stack(oob_crops), "clip": os.path.basename(clip_path), "reference_image": os.path.basename(ref_path), "fps": fps,
       "frame_shape": list(control.shape), "frame_sums": control.reshape(len(control), -1).sum(1, dtype=np.int64),
       "reference_sum": int(ref_img.sum(dtype=np.int64)),
       "reference_box": np.asarray(ref_bbox, dtype=np.float64), "driving_boxes": np.stack(raw_boxes),
       "motion_crop_boxes": np.stack(crop_boxes), "fix_length": list(map(float, fix_length)),
       "keep_frames": KEEP, "motion_crops": np.stack(motion), "reference_motion_crop": ref_motion,
       "reference_crop": reference}
if os.environ.get("ALL_OUT"):            # scratch-only inputs for make_loop.py (all frames' official crops)
    np.savez(os.environ["ALL_OUT"], all_motion_crops=np.stack([u8(cond.preprocess(p, height=224, width=224)) for p in pose_images]),
             reference_pose_crop=ref_motion, reference_crop_pre=np.asarray(ref_image_pil))
if mode == "make":
    np.savez_compressed(out_path, **{k: np.asarray(v) for k, v in res.items()})
    print("made", res["frame_shape"], res["reference_box"], res["driving_boxes"][:3], fix_length)
else:
    g = np.load(out_path)
    print("check", all(np.array_equal(g[k], np.asarray(v)) for k, v in res.items()))
