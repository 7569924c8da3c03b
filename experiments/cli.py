"""What the command-line entry points share: logging set-up, and user errors as one-line messages."""
from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from pathlib import Path

from experiments.callbacks import NonFiniteTrainingError
from experiments.rundir import in_multirun
from experiments.validation import ConfigError


@contextlib.contextmanager
def short_errors():
    """CLI entry points: a user error (bad config key, non-finite training, a directory another process writes)
    ends the process with exit status 1 and its one-paragraph message, not a traceback."""
    from toolbox.locks import DirectoryLocked

    try:
        yield
    except (ConfigError, NonFiniteTrainingError, DirectoryLocked) as err:
        if isinstance(err, ConfigError):
            _drop_unused_hydra_dir()
        sys.stdout.flush()
        raise SystemExit(f"error: {err}") from None


def _drop_unused_hydra_dir() -> None:
    """A config error stops the run before it writes anything: remove the output directory Hydra made for it
    (only when it holds nothing but Hydra's own `.hydra/` and log file)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or in_multirun():
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    if out.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        try:
            out.parent.rmdir()   # runs/<name>/ when this was its only run
        except OSError:
            pass


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", stream=sys.stdout)
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


