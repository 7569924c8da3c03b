"""GPU tests (`make test-gpu`, `pytest -m gpu`): skipped without CUDA. Importable with the GPU machine's packages
plus the wheels of benchmarks/gpu_wheels.sh (hydra-core, omegaconf, diffusers, av, ...): heavy imports are lazy."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine: make test-gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
