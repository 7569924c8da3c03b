"""Import by dotted path for config values: ``hydra.utils.get_object`` / ``get_class`` (what
``hydra.utils.instantiate`` locates ``_target_`` with), without Hydra's error log line, failing with a one-line
reason that the caller puts into an error naming the config key."""
from __future__ import annotations

import contextlib
import logging
from typing import Any


def locate(path: str, *, want_class: bool = False) -> Any:
    """The object (with ``want_class``: the class) ``path`` names; ``LookupError(<one-line reason>)`` otherwise."""
    from hydra.utils import get_class, get_object

    hydra_log = logging.getLogger("hydra.utils")
    try:
        with contextlib.ExitStack() as stack:
            if not hydra_log.disabled:
                hydra_log.disabled = True
                stack.callback(setattr, hydra_log, "disabled", False)
            return (get_class if want_class else get_object)(str(path))
    except Exception as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise LookupError(lines[-1 if isinstance(e.__cause__, ImportError) else 0]) from None
