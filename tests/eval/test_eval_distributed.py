"""eval.distributed: an evaluation sharded over 2 gloo ranks (CPU) writes what one process writes — every video once,
in test-set order, and the dataset metrics (FID through torchmetrics' ``merge_state``, FVD's sums and clip counts)
merged over the ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from eval.fid import FID
from eval.fvd import FVD
from eval.metrics import FrameBatch
from eval.protocol import load_protocol
from eval.runner import run_evaluation
from lit_models.baselines import CopySource
from lit_models.baselines.config import CopySourceConfig

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["resolution=16", "num_frames=9", "batch_size=1", "metrics=[l1,psnr,fid,fvd]",
             "standin_metrics=[fid,fvd]", "fvd_clip_len=2", "use_fid_reference_cache=false"]
N_VIDEOS = 5

RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
sys.path.insert(0, sys.argv[4])
from conftest import FakeEvalData
from eval.protocol import load_protocol
from eval.runner import run_evaluation
from lit_models.baselines import CopySource
from lit_models.baselines.config import CopySourceConfig

rank, rdzv, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=2)
res = run_evaluation(CopySource(CopySourceConfig()), FakeEvalData(n=int(sys.argv[5]), T=9, size=16),
                     load_protocol("synthfaces_self", json.loads(sys.argv[6])), out, progress=False)
with open(f"{out}.rank{rank}.json", "w") as f:
    json.dump(res["metrics"], f)
dist.destroy_process_group()
"""


def test_two_gloo_ranks_write_what_one_process_writes(tmp_path, fake_data):
    one = run_evaluation(CopySource(CopySourceConfig()), fake_data(n=N_VIDEOS, T=9, size=16),
                         load_protocol("synthfaces_self", OVERRIDES), tmp_path / "one", progress=False)
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), str(tmp_path / "rdzv"), str(out),
                               str(Path(__file__).parent), str(N_VIDEOS), json.dumps(OVERRIDES)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-4000:]

    ddp = json.loads((out / "metrics.json").read_text())
    assert ddp["num_videos"] == N_VIDEOS and ddp["num_frames"] == one["num_frames"] == N_VIDEOS * 8
    # rank 1 returns rank 0's result
    assert json.loads(Path(f"{out}.rank1.json").read_text()) == json.loads(Path(f"{out}.rank0.json").read_text())
    pf_ddp, pf_one = pd.read_csv(out / "per_frame.csv"), pd.read_csv(tmp_path / "one" / "per_frame.csv")
    assert list(zip(pf_ddp.video_id, pf_ddp.frame)) == list(zip(pf_one.video_id, pf_one.frame))
    assert pf_ddp["l1"].to_numpy() == pytest.approx(pf_one["l1"].to_numpy(), rel=1e-9)
    # dataset metrics: the merged running sums are those of one process (float64 sums in another order)
    for name in ("fid_STANDIN", "fvd_STANDIN"):
        assert ddp["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-6), name
    facts = ddp["dataset_metric_facts"]["fvd_STANDIN"]
    assert facts["clips"] == one["dataset_metric_facts"]["fvd_STANDIN"]["clips"] == {"real": 20, "fake": 20}


def _batch(seed: int, n: int = 6) -> FrameBatch:
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.rand(n, 3, 16, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g)
    return FrameBatch(pred=pred, target=target, source=target[0], driving=target, frame_index=list(range(n)))


@pytest.mark.parametrize("make", [lambda: FID(standin=True), lambda: FVD(clip_len=2, standin=True)])
def test_merge_state_of_two_shards_equals_one_metric_over_both(make):
    whole, a, b = make(), make(), make()
    for seed, shard in ((0, a), (1, b)):
        whole.update(_batch(seed))
        shard.update(_batch(seed))
    a.merge_state(b.state_dict())
    assert a.compute() == pytest.approx(whole.compute(), rel=1e-9)
    for k, v in whole.state_dict().items():
        got = a.state_dict()[k]
        assert (torch.allclose(got.double(), v.double(), rtol=1e-12) if torch.is_tensor(v) else got == v), k
