"""Hydra callback: a sweep says "job k/N" when each job starts, and "k/N jobs done … ETA" (from the mean time of the
finished jobs) when each ends — plain lines, so they land in logs too. Enabled for every entry point in
``experiments/configs/train.yaml`` (``hydra.callbacks.progress``)."""
from __future__ import annotations

import math
import time
from typing import Any, Optional

from hydra.experimental.callback import Callback

from toolbox.progress import PREFIX, _hms


def count_jobs(config: Any) -> Optional[int]:
    """Number of jobs of the basic sweeper's grid: sweep params from ``hydra.sweeper.params`` and the command line
    (the command line wins for the same key); None when it cannot be told."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        merged: dict[str, str] = {}
        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        for k, v in OmegaConf.to_container(params).items() if params else []:
            merged[str(k)] = f"{k}={v}"
        for o in OmegaConf.select(config, "hydra.overrides.task") or []:
            merged[str(o).split("=", 1)[0]] = str(o)
        overrides = OverridesParser.create().parse_overrides(list(merged.values()))
        n = 1
        for o in overrides:
            if o.is_sweep_override():
                n *= len(list(o.sweep_string_iterator()))
        return n
    except Exception:  # another sweeper (optuna, …) or syntax this count does not know
        return None


class SweepProgressCallback(Callback):
    def __init__(self) -> None:
        self.total: Optional[int] = None
        self.start = self.job_start = 0.0
        self.finished: list[float] = []
        self.in_multirun = False

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.in_multirun = True
        self.total = count_jobs(config)
        self.start = time.monotonic()
        print(f"{PREFIX} sweep: {self.total if self.total is not None else '?'} jobs", flush=True)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if not self.in_multirun:
            return
        from omegaconf import OmegaConf

        self.job_start = time.monotonic()
        k = int(OmegaConf.select(config, "hydra.job.num", default=len(self.finished))) + 1
        overrides = " ".join(OmegaConf.select(config, "hydra.overrides.task") or [])
        print(f"{PREFIX} sweep job {k}/{self.total or '?'} starting: {overrides}", flush=True)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        if not self.in_multirun:
            return
        self.finished.append(time.monotonic() - self.job_start)
        print(self.line(), flush=True)

    def line(self) -> str:
        done, total = len(self.finished), self.total
        mean = sum(self.finished) / done if done else math.nan
        eta = (total - done) * mean if total is not None else math.nan
        return (f"{PREFIX} sweep: {done}/{total if total is not None else '?'} jobs done | {mean:.1f} s/job | "
                f"elapsed {_hms(time.monotonic() - self.start)} | ETA {_hms(eta)}")
