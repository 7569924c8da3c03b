"""Hydra callbacks for multiruns (listed under ``hydra.callbacks`` of a sweep / hparams_search config)."""
from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback


class SweepDirFirst(Callback):
    """Create ``hydra.sweep.dir`` when the multirun starts, before the sweeper runs: the Optuna sweeper opens its
    study storage (``sqlite:///<sweep dir>/optuna.db``) before the launcher creates any job directory."""

    def on_multirun_start(self, config, **kwargs) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
