"""pose-evaluation's pickles + printed scores -> tests/golden/pose_eval/reference.npz (+ scores.json)."""
import json, re, sys
from pathlib import Path
import numpy as np, pandas as pd
OUT = Path(sys.argv[1]); HERE = Path("/work/scratch/poseeval_run")
arrays = {}
for kind in ("gt", "copy", "rev"):
    pose = pd.read_pickle(HERE / f"out/pose_{kind}.pkl").sort_values(by=["file_name", "frame_number"])
    ids = pd.read_pickle(HERE / f"out/id_{kind}.pkl").sort_values(by=["file_name", "frame_number"])
    for clip in sorted(set(pose.file_name)):
        p = pose[pose.file_name == clip]; e = ids[ids.file_name == clip]
        lm = np.stack([np.full((68, 2), np.nan) if v is None else np.asarray(v, np.float64) for v in p.value])
        arrays[f"{kind}/{clip}/landmarks"] = lm.astype(np.float32)
        arrays[f"{kind}/{clip}/embedding"] = np.stack([np.asarray(v, np.float32) for v in e.value])
np.savez_compressed(OUT / "reference.npz", **arrays)
log = (HERE / "run_all.log").read_text()
scores = {}
for kind, block in re.findall(r"== (\w+)\n(.*?)(?=\n== |\Z)", log, re.S):
    nums = re.findall(r"Average difference: ([-\d.e+naN]+)|Missing count: ([-\d.e+naN]+)", block)
    vals = [float(a or b) for a, b in nums]
    scores[kind] = {"akd_fan (cmp_with_missing_face.py)": vals[0], "mkr_fan (cmp_with_missing_face.py)": vals[1],
                    "aed_openface (cmp.py)": vals[2]}
(OUT / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
print(json.dumps(scores, indent=1)); print({k: v.shape for k, v in arrays.items()})
sys.path[:0] = ["/work/wt/evalb", "/work/wt/evalb/tests/eval"]
import hashlib, imageio.v2 as imageio
from eval.pose_eval import standin_seed_digest
frames_sha = {}
for clip in sorted((HERE / "frames" / "gt").iterdir()):
    fr = np.stack([imageio.imread(p) for p in sorted(clip.iterdir())])
    frames_sha[clip.name] = hashlib.sha256(fr.tobytes()).hexdigest()
out = {"scores": scores, "frames_sha256": frames_sha, "standin_crc32": standin_seed_digest()}
(OUT / "scores.json").write_text(json.dumps(out, indent=1) + "\n")
print(out)
