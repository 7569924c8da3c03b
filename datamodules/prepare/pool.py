"""The process pool of the preparation commands."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes started by a fork server: forking the caller itself (Python 3.11's default on Linux)
    copies whatever locks its other threads (torch's, PyAV's, a logging handler's) hold at that moment, and a worker
    can then wait on one forever."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
