"""Preemption, proven on real processes: a preemption signal mid-training makes the job write `last.ckpt` at the next
step boundary (no periodic checkpoint exists to fall back on: the interval is longer than the run), the job is
requeued — by submitit's local executor through hydra-submitit-launcher, exactly the SLURM launcher's protocol — or
stops, and the restarted job resumes by itself; its final weights must equal an uninterrupted run's bit for bit.
The SLURM launcher's allocation follows the trainer (`gpus_per_node` / `tasks_per_node` = `trainer.devices`,
`nodes` = `trainer.num_nodes`)."""
from __future__ import annotations

import json
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


MAX_STEPS = 10


def env(tmp_path: Path) -> dict:
    return subprocess_env(tmp_path, HYDRA_FULL_ERROR="1")


def args(data_root: Path, *extra: str) -> list[str]:
    """mrfa_tiny (its equivariance loss draws random warps: the RNG state matters), 3 steps an epoch (the signal
    lands in an epoch after the first), no step checkpoint before the end (`checkpoint_every_n_steps` > max_steps):
    the only checkpoint a resumed run can start from is the one written on the signal."""
    return ["model=mrfa_tiny", "debug=fast", f"data.root={data_root}", "data.synth=null", "data.num_frames=1",
            "data.batch_size=2", "data.steps_per_epoch=3", "evaluate_after_train=false", "logger=csv",
            "trainer.limit_val_batches=0", f"trainer.max_steps={MAX_STEPS}", "trainer.checkpoint_every_n_steps=1000",
            "trainer.val_check_interval=1000", "trainer.record_sample_indices=true", *extra]


def steps_started(run_dir: Path) -> int:
    f = run_dir / "samples" / "rank0.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def signal_mid_training(proc: subprocess.Popen, run_dir: Path, sig: int, pick_pid, after: int = 3,
                        timeout: float = 600) -> None:
    """Once `after` training steps have started in `run_dir`, send `sig` to the process `pick_pid()` names."""
    deadline = time.monotonic() + timeout
    while steps_started(run_dir) < after:
        assert proc.poll() is None, f"ended (rc={proc.returncode}) before step {after}"
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.02)
    os.kill(pick_pid(), sig)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: Linux, as the submitit local executor's tests run)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def assert_same_weights(a: Path, b: Path, what: str) -> None:
    """Two checkpoints at MAX_STEPS hold bit-identical weights and Adam moments (the max |Δ| is printed)."""
    diffs = checkpoint_differences(a, b, MAX_STEPS)
    print(f"{what}, weight max abs diff vs uninterrupted = {max(diffs.values(), default=0.0)}")
    assert not diffs, diffs


def one_preemption(run_dir: Path, sig: int) -> dict:
    lines = (run_dir / "preemptions.jsonl").read_text().splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["signal"] == sig and 3 <= entry["step"] < MAX_STEPS, entry   # mid-training, not at the end
    assert not (run_dir / "preempted.json").exists()   # the resumed run finished: nothing left to resume
    return entry


def uninterrupted(data_root: Path, tmp_path: Path) -> Path:
    out = subprocess.run([sys.executable, "-m", "experiments.train", *args(data_root, f"run_dir={tmp_path / 'full'}")],
                         cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / "full" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_submitit_requeue_after_preemption_signal_resumes_bit_identical(synth_root, tmp_path):
    full = uninterrupted(synth_root, tmp_path)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments.train", "-m", "hydra/launcher=submitit_local",
           f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job0", "hydra.launcher.timeout_min=30",
           *args(synth_root)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)

    def submitit_task() -> int:   # the job process the local executor started (what SLURM would signal)
        for pid in descendants(proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "submitit.core._submit" in cmd:
                return pid
        raise AssertionError("no submitit task process")

    try:
        signal_mid_training(proc, sweep / "job0", signal.SIGUSR2, submitit_task)   # submitit's preemption signal
        log, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-3000:]
    run_dir = sweep / "job0"
    entry = one_preemption(run_dir, signal.SIGUSR2)
    assert entry["submitit"] is True
    job_log = "\n".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "Requeued job" in job_log and "requeued after preemption: resuming from" in job_log, job_log[-3000:]
    # the requeued job continued the step sequence where the checkpoint left it (no step redone or skipped)
    steps = [json.loads(ln)["step"] for ln in (run_dir / "samples" / "rank0.jsonl").read_text().splitlines()]
    cut = entry["step"]
    assert steps[-(MAX_STEPS - cut):] == list(range(cut, MAX_STEPS)), steps
    assert_same_weights(full, run_dir / "checkpoints" / "last.ckpt", f"submitit requeue: preempted at step {cut}")


@pytest.mark.slow
def test_preemption_signal_without_submitit_stops_with_checkpoint_and_restart_resumes(synth_root, tmp_path):
    full = uninterrupted(synth_root, tmp_path)
    split = tmp_path / "split"
    cmd = [sys.executable, "-m", "experiments.train", *args(synth_root, f"run_dir={split}")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        signal_mid_training(proc, split, signal.SIGUSR1, lambda: proc.pid)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGUSR1, err[-3000:]
    assert f"continue with resume=true run_dir={split}" in err
    marker = json.loads((split / "preempted.json").read_text())
    saved = torch.load(split / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == marker["step"] and 3 <= marker["step"] < MAX_STEPS
    # the same command again (what a requeue runs: no resume=true) continues the checkpoint by itself
    out = subprocess.run(cmd, cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "requeued after preemption: resuming from" in out.stdout + out.stderr
    one_preemption(split, signal.SIGUSR1)
    assert_same_weights(full, split / "checkpoints" / "last.ckpt", f"plain SIGUSR1: preempted at step {marker['step']}")


def test_slurm_launcher_allocation_follows_the_trainer(compose_cfg):
    import experiments.runtime  # noqa: F401  (registers the launcher's resolvers, as the entry points do)

    hc = compose_cfg("train", ["hydra/launcher=slurm", "trainer=multinode", "trainer.devices=8", "trainer.num_nodes=4"],
                     return_hydra_config=True).hydra.launcher
    assert (hc.gpus_per_node, hc.tasks_per_node, hc.nodes) == (8, 8, 4)
    hc = compose_cfg("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=[0,1,2]"],
                     return_hydra_config=True).hydra.launcher
    assert (hc.gpus_per_node, hc.tasks_per_node, hc.nodes) == (3, 3, 1)
    hc = compose_cfg("train", ["hydra/launcher=slurm", "trainer=ddp_cpu", "trainer.devices=2"],
                     return_hydra_config=True).hydra.launcher
    assert (hc.gpus_per_node, hc.tasks_per_node) == (0, 2)   # CPU processes: no GPU asked for
    hc = compose_cfg("train", ["sweep=mrfa_refine_iters_vox", "hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert (hc.gpus_per_node, hc.tasks_per_node, hc.nodes) == (8, 8, 1)   # the real-data sweep's 8 GPUs
    hc = compose_cfg("train", ["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True).hydra.launcher
    with pytest.raises(Exception, match="trainer.devices='auto'.*set trainer.devices=N"):
        _ = hc.gpus_per_node


def test_preemption_checkpoint_waits_for_the_step_boundary_and_syncs_ranks():
    """The callback saves only at an optimizer-step boundary (not mid gradient accumulation) and writes the marker
    a restart resumes from."""
    import tempfile
    from types import SimpleNamespace

    from experiments.preemption import Preempted, Preemption, PreemptionCheckpoint, requeued

    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d)
        pre = Preemption(run_dir)
        saved = []
        accumulate = [True]
        trainer = SimpleNamespace(received_sigterm=False, world_size=1, global_step=5,
                                  fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_should_accumulate=lambda: accumulate[0])),
                                  save_checkpoint=lambda p: saved.append(p))
        cb = PreemptionCheckpoint(pre)
        cb.on_train_batch_end(trainer, None, None, None, 0)
        assert saved == []                                        # no signal: nothing
        pre.signum = int(signal.SIGUSR1)
        cb.on_train_batch_end(trainer, None, None, None, 0)
        assert saved == [] and not requeued(run_dir)              # mid-accumulation: waits
        accumulate[0] = False
        with pytest.raises(Preempted):
            cb.on_train_batch_end(trainer, None, None, None, 1)
        assert saved == [str(run_dir / "checkpoints" / "last.ckpt")]
        assert requeued(run_dir) and json.loads((run_dir / "preempted.json").read_text())["step"] == 5
