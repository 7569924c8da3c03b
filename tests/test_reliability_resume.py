"""Exact resume, proven the hard way: a real training process is SIGKILLed between step checkpoints, resumed with
`resume=true run_dir=...`, and its final weights must equal an uninterrupted run's BIT FOR BIT (torch.equal) —
on SynthFaces and on real clips in the FOMM layout; and a killed sweep, relaunched into its directory, redoes no
finished job and ends with the same weights as an uninterrupted sweep."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import checkpoint_differences, subprocess_env

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS, EVERY = 8, 2


def env(tmp_path: Path) -> dict:
    return subprocess_env(tmp_path, PORTRAITLAB_DATA=str(tmp_path / "data"))


def train_args(data_root: Path, *extra: str) -> list[str]:
    """mrfa_tiny (its equivariance loss draws random TPS warps: the torch RNG matters) for MAX_STEPS steps, a step
    checkpoint every EVERY steps, no evaluation (weights are the measurement)."""
    return [sys.executable, "-m", "experiments.train", "model=mrfa_tiny", "debug=fast", f"data.root={data_root}",
            "data.synth=null", "data.num_frames=1", "data.batch_size=2", "data.steps_per_epoch=3",
            "evaluate_after_train=false", "logger=csv", "trainer.limit_val_batches=0",
            f"trainer.max_steps={MAX_STEPS}", f"trainer.checkpoint_every_n_steps={EVERY}",
            "trainer.val_check_interval=1000", *extra]


def run(cmd: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def kill_between_checkpoints(cmd: list[str], ckpt_dir: Path, tmp_path: Path, timeout: float = 600) -> int:
    """Start `cmd`, SIGKILL it as soon as the first step checkpoint is on disk (mid-way to the next one); returns
    the global step of the last.ckpt left behind (asserting the process really died before the end)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    first = ckpt_dir / f"step{EVERY:07d}.ckpt"
    deadline = time.monotonic() + timeout
    try:
        while not first.exists():
            if proc.poll() is not None:
                raise AssertionError(f"training ended (rc={proc.returncode}) before its first checkpoint: "
                                     + proc.stderr.read().decode()[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError("no step checkpoint within the timeout")
            time.sleep(0.02)
        time.sleep(0.3)   # a few batches into the next interval
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    step = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert EVERY <= step < MAX_STEPS, f"killed too late (last.ckpt at step {step})"
    return step


def assert_bit_identical(a: Path, b: Path) -> None:
    """Weights and Adam moments of two checkpoints at MAX_STEPS equal to the bit."""
    diff = checkpoint_differences(a, b, MAX_STEPS)
    assert not diff, f"{len(diff)} tensors differ, max abs diff {max(diff.values()):.3g} ({next(iter(diff))})"


def kill_resume_compare(data_root: Path, tmp_path: Path, *extra: str) -> int:
    full, split = tmp_path / "full", tmp_path / "split"
    run(train_args(data_root, f"run_dir={full}", *extra), tmp_path)
    step = kill_between_checkpoints(train_args(data_root, f"run_dir={split}", *extra), split / "checkpoints", tmp_path)
    killed = torch.load(split / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    run(train_args(data_root, f"run_dir={split}", "resume=true", *extra), tmp_path)
    assert_bit_identical(full / "checkpoints" / "last.ckpt", split / "checkpoints" / "last.ckpt")
    # the resumed run really trained on (the comparison is not between two copies of the killed state)
    final = torch.load(split / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(not torch.equal(killed[k], v) for k, v in final.items())
    return step


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_on_synthfaces(synth_root, tmp_path):
    kill_resume_compare(synth_root, tmp_path)


@pytest.fixture
def real_fomm_root(real_fixtures, tmp_path) -> Path:
    """The real talking-head tiles in FOMM's layout root/{train,test}/*.mp4 (symlinks into the fixtures)."""
    clips = sorted((real_fixtures / "clips").glob("talkinghead1kh_*.mp4"))
    if len(clips) < 4:
        pytest.skip(f"fewer than 4 talkinghead1kh clips in {real_fixtures / 'clips'}")
    root = tmp_path / "vox"
    for i, clip in enumerate(clips):
        dest = root / ("test" if i % 4 == 3 else "train") / f"id{i // 2:02d}#vid#{i:02d}#0.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(clip)
    return root


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_on_real_clips(real_fomm_root, tmp_path):
    kill_resume_compare(real_fomm_root, tmp_path, "data=voxceleb", "data.resolution=64")


def sweep_args(data_root: Path, sweep_dir: Path, *extra: str) -> list[str]:
    """A two-job Hydra multirun (model.refine_iters=0,1) of the same tiny training, into `sweep_dir`."""
    cmd = train_args(data_root, *extra)
    return [*cmd[:3], "-m", f"hydra.sweep.dir={sweep_dir}", "model.refine_iters=0,1", *cmd[3:]]


def one(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


@pytest.mark.slow
def test_killed_sweep_relaunched_redoes_no_finished_job_and_matches_bit_for_bit(synth_root, tmp_path):
    full, killed = tmp_path / "sweep_full", tmp_path / "sweep_killed"
    run(sweep_args(synth_root, full), tmp_path)
    proc = subprocess.Popen(sweep_args(synth_root, killed), cwd=REPO, env=env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not (list(killed.glob("0_*/train_done.json")) and list(killed.glob(f"1_*/checkpoints/step{EVERY:07d}.ckpt"))):
            assert proc.poll() is None, f"the sweep ended (rc={proc.returncode}) before the second job's checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    job0, job1 = one("0_*", killed), one("1_*", killed)
    step = torch.load(job1 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert EVERY <= step < MAX_STEPS
    stamps = {p: p.stat().st_mtime_ns for p in (job0 / "checkpoints" / "last.ckpt", job0 / "train_done.json")}

    out = run(sweep_args(synth_root, killed, "resume=true"), tmp_path)
    assert f"{job0} (finished before: not redone)" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps            # job 0 untouched
    assert one("1_*", killed) == job1 and (job1 / "train_done.json").exists()
    for name in ("0_*", "1_*"):
        assert_bit_identical(one(name, full) / "checkpoints" / "last.ckpt", one(name, killed) / "checkpoints" / "last.ckpt")
