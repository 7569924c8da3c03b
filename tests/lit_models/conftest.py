"""Fixtures shared by the method tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP barrier stalls on a shared 2-core machine (with the default
    active wait policy, two threads make these tests 10-30× slower when the cores are busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
