"""Preemption of a training run: a checkpoint at the next optimizer-step boundary, then requeue (submitit / SLURM)
or exit; the restarted job resumes by itself (``requeued``). ``experiments.train`` installs ``Preemption`` and
``experiments.trainer.build_trainer`` adds ``PreemptionCheckpoint`` to the callbacks."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L

log = logging.getLogger("portraitlab")

PREEMPT_FILE = "preempted.json"       # in the run directory while a preempted run has work left (resume on restart)
PREEMPT_LOG = "preemptions.jsonl"     # one line per preemption (step, signal, time), kept


class Preempted(BaseException):
    """Raised out of ``trainer.fit`` right after the preemption checkpoint is written (a BaseException, as Lightning's
    own ``SIGTERMException``, so that no ``except Exception`` in between swallows it)."""


def submitit_environment():
    """submitit's ``JobEnvironment`` when this process is a submitit job (SLURM or local executor) — its
    ``checkpoint_and_try_requeue`` handler is installed on submitit's signal — else None (a plain sbatch / srun
    process has SLURM variables but no submitit handler)."""
    import signal

    if not any(k.startswith("SUBMITIT_") for k in os.environ) and "SLURM_JOB_ID" not in os.environ:
        return None
    try:
        import submitit

        env = submitit.JobEnvironment()
        handler = signal.getsignal(type(env)._usr_sig())
    except Exception:  # noqa: BLE001 - not a submitit job
        return None
    owner = getattr(handler, "__self__", None)
    return env if owner is not None and type(owner).__module__.startswith("submitit") else None


def preemption_signals() -> list[int]:
    """The signals that mean "checkpoint now, you will be stopped": submitit's (``SIGUSR2`` unless
    ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise; what ``hydra.launcher.signal_delay_s`` sends before the time limit and
    what submitit's local executor sends on ``job._interrupt()``) in a submitit job, else ``SIGUSR1`` (Lightning's
    and ``sbatch --signal=USR1@90``'s convention). SIGTERM is Lightning's (``trainer.received_sigterm``)."""
    import signal

    env = submitit_environment()
    if env is not None:
        return [int(type(env)._usr_sig())]
    return [int(signal.SIGUSR1)]


class Preemption:
    """The run's preemption protocol. ``install()`` takes over the preemption signals (keeping the handlers it
    replaces, e.g. submitit's ``checkpoint_and_try_requeue``). A signal during ``trainer.fit`` is deferred: the
    ``PreemptionCheckpoint`` callback writes ``last.ckpt`` at the next optimizer-step boundary (the same point as
    a step checkpoint, so a resume continues bit for bit), records ``preempted.json`` and stops training; a signal
    outside training is recorded at once. ``forward()`` then hands over to the replaced handler — submitit dumps the
    job again (hydra-submitit-launcher's ``checkpoint``: the same overrides) and requeues it, SLURM without
    submitit is requeued with ``scontrol requeue`` — or, elsewhere, exits with status 128 + signal. The restarted
    job finds ``preempted.json`` (or ``SLURM_RESTART_COUNT``) and resumes (``requeued``)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.signum: Optional[int] = None
        self.in_fit = False
        self.step: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self.submitit = False

    def install(self) -> "Preemption":
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self   # signal handlers live in the main thread only (e.g. a test calling train in a thread)
        self.submitit = submitit_environment() is not None
        for sig in preemption_signals():
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        log.warning("received signal %d: %s", signum, "checkpoint at the next step, then stop" if self.in_fit
                    else "no training step in progress, stopping now")
        self.signum = int(signum)
        if not self.in_fit:
            self.record(step=None)
            self.forward()

    def record(self, step: Optional[int]) -> None:
        """``preempted.json`` (restart → resume) and a line in ``preemptions.jsonl``; global rank 0 only."""
        import json
        import time

        from toolbox.io import atomic_write_json

        if _rank() != 0:
            return
        self.step = step
        entry = {"signal": self.signum, "step": step, "time": time.time(),
                 "ckpt": str(self.run_dir / "checkpoints" / "last.ckpt"),
                 "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "submitit": self.submitit}
        atomic_write_json(self.run_dir / PREEMPT_FILE, entry)
        with open(self.run_dir / PREEMPT_LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def forward(self) -> None:
        """Hand the preemption over to whoever requeues: the replaced handler (submitit: requeue + exit), else
        ``scontrol requeue`` under SLURM, else exit 128 + signal with the command that continues."""
        import signal as _signal
        import subprocess

        signum = int(self.signum or _signal.SIGTERM)
        prev = self._previous.get(signum)
        self.uninstall()
        if callable(prev):
            prev(signum, None)       # submitit: dumps the job, requeues, exits (rank 0); other ranks return
            if _rank() != 0:
                raise SystemExit(0)
        job = os.environ.get("SLURM_JOB_ID")
        if job and _rank() == 0 and prev in (None, _signal.SIG_DFL, _signal.SIG_IGN):
            array = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array and os.environ.get("SLURM_ARRAY_TASK_ID") else job
            rc = subprocess.call(["scontrol", "requeue", job])
            log.warning("scontrol requeue %s: %s", job, "done" if rc == 0 else f"failed (exit {rc})")
        sys.stdout.flush()
        print(f"preempted (signal {signum}) at step {self.step}: {self.run_dir / 'checkpoints' / 'last.ckpt'} holds "
              f"the state; continue with resume=true run_dir={self.run_dir}", file=sys.stderr)
        raise SystemExit(128 + signum)


def _rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def requeued(run_dir: Path) -> bool:
    """This job is a restart of a preempted / timed-out one: ``preempted.json`` in its run directory, or SLURM's
    ``SLURM_RESTART_COUNT`` > 0 (a requeue by the scheduler itself, e.g. ``PreemptMode=REQUEUE``)."""
    return (Path(run_dir) / PREEMPT_FILE).exists() or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


class PreemptionCheckpoint(L.Callback):
    """Turns a preemption signal (``Preemption``) or Lightning's SIGTERM into ``last.ckpt`` at the next
    optimizer-step boundary, then raises ``Preempted``. Runs in ``on_train_batch_end`` after ``FiniteCheck`` (a
    non-finite state is never saved) and before ``ModelCheckpoint`` (Lightning orders checkpoint callbacks last),
    i.e. exactly where a step checkpoint is written; under DDP every rank stops at the same step."""

    def __init__(self, preemption: Preemption):
        self.preemption = preemption

    def on_train_start(self, trainer, pl_module) -> None:
        self.preemption.in_fit = True

    def on_train_end(self, trainer, pl_module) -> None:
        self.preemption.in_fit = False

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.preemption.in_fit = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        asked = self.preemption.signum is not None or bool(trainer.received_sigterm)
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if not asked or trainer.fit_loop.epoch_loop._should_accumulate():   # mid-accumulation: not a step boundary
            return
        if self.preemption.signum is None:
            import signal

            self.preemption.signum = int(signal.SIGTERM)
        path = self.preemption.run_dir / "checkpoints" / "last.ckpt"
        for cb in getattr(trainer, "checkpoint_callbacks", []):   # last.ckpt is theirs: the resumed run overwrites it
            if getattr(cb, "save_last", False):                   # (not last-v1.ckpt beside it)
                cb.last_model_path = str(path)
        trainer.save_checkpoint(str(path))
        self.preemption.record(step=int(trainer.global_step))
        self.preemption.in_fit = False
        log.warning("preemption: checkpoint of step %d written to %s", trainer.global_step, path)
        raise Preempted(f"preempted at step {trainer.global_step}")
