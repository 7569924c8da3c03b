"""DDP on CPU (gloo, 2 processes through the real CLI): disjoint sample streams per rank, weights equal to one
process with the same global batch, exact kill-and-resume under DDP, and an evaluation that scores every test
video exactly once (rank shards without padding, gathered on rank 0)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# float32: the 2-rank all-reduced mean of two half-batch gradients vs one full-batch mean differ by rounding only
WEIGHT_ATOL = 1e-5


def run_cli(synth_root: Path, run_dir: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "MASTER_", "WORLD_SIZE", "NODE_RANK"))}
    env.update(PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE", WANDB_MODE="offline", WANDB_SILENT="true",
               OMP_NUM_THREADS="1", PORTRAITLAB_RUNS=str(run_dir.parent / "hydra_runs"))
    cmd = [sys.executable, "-m", "experiments.train", "experiment=mrfa_synthfaces", "debug=fast",
           f"data.root={synth_root}", "data.synth=null", f"run_dir={run_dir}", "logger=csv",
           "model.norm=group",                  # per-sample normalisation: a split batch computes the same thing
           "trainer.limit_val_batches=0", "trainer.record_sample_indices=true", "model.lr=1e-3", *extra]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-4000:])
    return out


def samples(run_dir: Path) -> dict[int, list[tuple[int, list[int]]]]:
    out = {}
    for path in sorted((run_dir / "samples").glob("rank*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        out[int(path.stem[4:])] = [(r["step"], r["index"]) for r in rows]
    return out


def state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def losses(run_dir: Path) -> pd.Series:
    df = pd.concat([pd.read_csv(p) for p in sorted((run_dir / "csv").glob("version_*/metrics.csv"))])
    return df[df["train/loss"].notna()].set_index("step")["train/loss"].sort_index()


@pytest.mark.slow
def test_ddp_cpu_two_ranks_equal_one_process_resume_exactly_and_evaluate_each_video_once(synth_root, tmp_path):
    n = 2   # steps per half; global batch 4 = 2 ranks × 2
    ddp = ["trainer=ddp_cpu", "trainer.devices=2", "data.batch_size=2"]
    common = [f"trainer.checkpoint_every_n_steps={n}", "eval_protocol.max_videos=3", "eval_protocol.num_frames=4"]
    single, full, split = tmp_path / "single", tmp_path / "ddp_full", tmp_path / "ddp_split"
    run_cli(synth_root, single, "data.batch_size=4", f"trainer.max_steps={2 * n}", *common)
    run_cli(synth_root, full, *ddp, f"trainer.max_steps={2 * n}", *common)
    # "killed" after n steps (its last.ckpt is the step-n checkpoint), then resume=true to 2n
    run_cli(synth_root, split, *ddp, f"trainer.max_steps={n}", "evaluate_after_train=false", *common)
    run_cli(synth_root, split, *ddp, f"trainer.max_steps={2 * n}", "resume=true", *common)

    # 1. each rank reads a disjoint stride of the one stream; together they read what one process reads
    seen = samples(full)
    assert sorted(seen) == [0, 1]
    r0 = [i for _, idx in seen[0] for i in idx]
    r1 = [i for _, idx in seen[1] for i in idx]
    assert not set(r0) & set(r1)
    one = samples(single)[0]
    assert sorted(r0 + r1) == sorted(i for _, idx in one for i in idx) == list(range(8 * n))
    for (step0, a), (step1, b), (step, c) in zip(seen[0], seen[1], one):
        assert step0 == step1 == step and sorted(a + b) == sorted(c)   # the same global batch at every step

    # 2. weights: 2 ranks × batch 2 == 1 process × batch 4 (gradients all-reduced to the same mean)
    a, b = state(single)["state_dict"], state(full)["state_dict"]
    diffs = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()}
    assert max(diffs.values()) < WEIGHT_ATOL, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    init_moved = state(single)["global_step"] == 2 * n
    assert init_moved

    # 3. kill-and-resume under DDP continues exactly: same weights, same stream, same logged losses and metrics
    c = state(split)
    assert c["global_step"] == 2 * n
    for k, v in b.items():
        torch.testing.assert_close(c["state_dict"][k], v, atol=1e-6, rtol=0)
    assert samples(split) == seen
    assert list(losses(split).values) == pytest.approx(list(losses(full).values), abs=1e-6)
    m_full = json.loads((full / "metrics.json").read_text())["metrics"]
    m_split = json.loads((split / "metrics.json").read_text())["metrics"]
    assert m_split == pytest.approx(m_full, abs=1e-5)

    # 4. evaluation under DDP: 3 videos over 2 ranks (uneven), each exactly once, same numbers as one process
    pv_ddp = pd.read_csv(full / "per_video.csv")
    pv_one = pd.read_csv(single / "per_video.csv")
    assert len(pv_ddp) == 3 and pv_ddp["video_id"].is_unique
    assert list(pv_ddp["video_id"]) == list(pv_one["video_id"])            # test-set order kept
    for col in ("l1", "psnr", "ssim"):
        assert pv_ddp[col].to_numpy() == pytest.approx(pv_one[col].to_numpy(), abs=1e-4)
    meta = json.loads((full / "metrics.json").read_text())
    assert meta["num_videos"] == 3 and meta["num_frames"] == len(pd.read_csv(full / "per_frame.csv"))
