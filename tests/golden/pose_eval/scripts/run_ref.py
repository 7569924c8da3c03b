"""Run one pose-evaluation script unchanged, with the shims this CPU machine needs:
.cuda() is the identity (no GPU), face_alignment 1.5.0 spells LandmarksType._2D as TWO_D and defaults to
device='cuda' (here 'cpu') and compile=True (here False: eager, the same network)."""
import sys, runpy
import torch
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
import face_alignment
type.__setattr__(face_alignment.LandmarksType, "_2D", face_alignment.LandmarksType.TWO_D)
_init = face_alignment.FaceAlignment.__init__
def _cpu_init(self, *a, **k):
    k.setdefault("device", "cpu"); k.setdefault("compile", False); _init(self, *a, **k)
face_alignment.FaceAlignment.__init__ = _cpu_init
HERE = "/work/scratch/poseeval_run"; POSE_EVAL = "/work/scratch/official/pose-evaluation"
sys.path[:0] = [HERE, POSE_EVAL]
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script if "/" in script else f"{POSE_EVAL}/{script}", run_name="__main__")
