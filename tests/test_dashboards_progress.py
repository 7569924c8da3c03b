"""Progress in logs (toolbox.progress): when stdout is not a TTY, plain lines "done/total, rate, ETA" — for the
training loop, the evaluation, and a sweep's "job k/N" with an ETA from finished jobs."""
from __future__ import annotations

import io

from omegaconf import OmegaConf

from helpers import tiny_run
from toolbox import progress as P


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_lines_report_done_total_rate_eta_and_are_rate_limited(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(P.time, "monotonic", clock)
    out = io.StringIO()
    with P.Progress(total=10, desc="eval p", unit="videos", every_s=30, stream=out) as p:
        assert p.mode == "lines"                       # a StringIO is not a TTY
        for _ in range(4):
            clock.t += 2.0                             # 0.5 videos/s
            p.update()
        clock.t += 40.0
        p.update()                                     # 30 s since the first line: printed
    lines = out.getvalue().splitlines()
    assert lines[0] == "[progress] eval p: 1/10 videos (10%) | 2 s/video | elapsed 0:00:02 | ETA 0:00:18"
    assert lines[1] == "[progress] eval p: 5/10 videos (50%) | 9.6 s/video | elapsed 0:00:48 | ETA 0:00:48"
    assert len(lines) == 2                             # updates 2–4 were within 30 s; the final state was printed


def test_resumed_progress_rates_only_the_new_work(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(P.time, "monotonic", clock)
    out = io.StringIO()
    p = P.Progress(total=10, desc="eval", unit="videos", initial=6, every_s=0, stream=out)
    clock.t += 4.0
    p.update(2)
    p.close()
    assert out.getvalue().splitlines()[0].startswith("[progress] eval: 8/10 videos (80%) | 2 s/video")
    assert out.getvalue().splitlines()[0].endswith("ETA 0:00:04")


def test_env_forces_off(monkeypatch):
    monkeypatch.setenv("PORTRAITLAB_PROGRESS", "off")
    out = io.StringIO()
    assert list(P.track(range(3), desc="x", stream=out, every_s=0)) == [0, 1, 2] and out.getvalue() == ""


def test_sweep_counts_jobs_and_gives_an_eta_from_finished_jobs(monkeypatch, capsys):
    from experiments.sweep_progress import SweepProgressCallback, count_jobs

    cfg = OmegaConf.create({"hydra": {"sweeper": {"params": {"model.refine_iters": "0,1,2,4", "seed": "0,1"}},
                                      "overrides": {"task": ["trainer.max_steps=5"]}, "job": {"num": 0}}})
    assert count_jobs(cfg) == 8
    cfg.hydra.overrides.task = ["seed=0,1,2"]          # the command line wins for the same key
    assert count_jobs(cfg) == 12
    clock = Clock()
    monkeypatch.setattr("experiments.sweep_progress.time.monotonic", clock)
    cb = SweepProgressCallback()
    cfg.hydra.sweeper.params = {"seed": "0,1,2,3"}
    cfg.hydra.overrides.task = []
    cb.on_multirun_start(cfg)
    for k, seconds in enumerate((10.0, 20.0)):
        cfg.hydra.job.num = k
        cb.on_job_start(cfg)
        clock.t += seconds
        cb.on_job_end(cfg)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[progress] sweep: 4 jobs"
    assert out[1].startswith("[progress] sweep job 1/4 starting")
    assert out[-1] == "[progress] sweep: 2/4 jobs done | 15.0 s/job | elapsed 0:00:30 | ETA 0:00:30"


def test_training_and_evaluation_write_progress_lines_when_stdout_is_a_log(compose_cfg, synth_root, tmp_path,
                                                                          monkeypatch, capsys):
    from experiments.train import train

    monkeypatch.setenv("PORTRAITLAB_PROGRESS_EVERY", "0")
    monkeypatch.delenv("PORTRAITLAB_PROGRESS", raising=False)
    run = tmp_path / "run"
    train(compose_cfg("train", ["experiment=baseline_direct",
                                *tiny_run(synth_root, run, "logger=csv", "trainer.enable_progress_bar=true",
                                          "trainer.max_steps=3", "trainer.val_check_interval=100")]))
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[progress]")]
    train_lines = [ln for ln in lines if ln.startswith("[progress] train:")]
    assert [ln.split(" | ")[0] for ln in train_lines] == [f"[progress] train: {k}/3 steps ({round(100 * k / 3)}%)"
                                                          for k in (1, 2, 3)]
    assert all("loss " in ln and "ETA" in ln for ln in train_lines)
    assert any(ln.startswith("[progress] eval synthfaces_self: 2/2 videos (100%)") for ln in lines)
