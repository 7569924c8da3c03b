"""Write the test frames as lossless PNG folders and inject the repo's stand-in weights where the reference code
loads its real weights (TORCH_HOME hub checkpoints, OpenFacePytorch/openface.pth)."""
import sys
from pathlib import Path
REPO = Path(sys.argv[1]); OUT = Path(sys.argv[2])
sys.path[:0] = [str(REPO), str(REPO / "tests" / "eval")]
import torch, imageio.v2 as imageio
from pose_eval_frames import all_clip_frames, generated
from eval.pose_eval import standin_state_dict
clips = all_clip_frames(REPO.parent / "shared" / "fixtures" / "real" / "clips")
for name, fr in clips.items():
    for kind, video in {"gt": fr, **generated(fr)}.items():
        d = OUT / "frames" / kind / name
        d.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(video):
            imageio.imwrite(d / f"{i:04d}.png", f)
hub = OUT / "torchhome" / "hub" / "checkpoints"; hub.mkdir(parents=True, exist_ok=True)
torch.save(standin_state_dict("s3fd"), hub / "s3fd-619a316812.pth")
torch.save(standin_state_dict("fan2d"), hub / "2DFAN4-11f355bf06.pth.tar")
torch.save(standin_state_dict("openface_nn4small2"), OUT / "OpenFacePytorch" / "openface.pth")
print("frames + stand-in weights written")
