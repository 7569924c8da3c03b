"""Official X-NeMo context windows (x-nemo-inference@acaa1d0 src/pipelines/context.py `uniform`), called exactly
as Pose2VideoPipeline.__call__ calls it: uniform(0, num_inference_steps=35, N, context_frames=24, context_stride=1,
context_overlap=4, True, offset)."""
import json, sys
sys.path.insert(0, "/work/scratch/official/x-nemo-inference")
from src.pipelines.context import get_context_scheduler
sched = get_context_scheduler("uniform")
out = {"source": "x-nemo-inference@acaa1d06559942f34a9bf495ec82be7e5ffc9268 src/pipelines/context.py uniform",
       "call": "uniform(0, 35, N, 24, 1, 4, True, offset)", "context_frames": 24, "context_overlap": 4, "cases": []}
for N in (16, 24, 25, 41, 44, 45, 100):
    for offset in (0, 1, 7, 23):
        wins = [list(map(int, w)) for w in sched(0, 35, N, 24, 1, 4, True, offset)]
        out["cases"].append({"num_frames": N, "offset": offset, "windows": wins})
json.dump(out, open(sys.argv[1], "w"), separators=(",", ":"))
print({(c["num_frames"], c["offset"]): len(c["windows"]) for c in out["cases"]})
