"""Shared test fixtures: real-fixture lookup (skips cleanly when absent), config composition, small SynthFaces, a
headless Chromium. The plain helpers they share with the test files are in tests/helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP busy-waiting on 2 shared cores

import torch  # noqa: E402

from experiments.compose import compose  # noqa: E402
from helpers import find_chromium  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def fixtures_root() -> Path:
    """Real media fixtures: $PORTRAITLAB_FIXTURES, default ../shared/fixtures/real beside the checkout."""
    return Path(os.environ.get("PORTRAITLAB_FIXTURES", REPO.parent / "shared" / "fixtures" / "real"))


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    root = fixtures_root()
    if not (root / "ATTRIBUTION.md").exists():
        pytest.skip(f"real fixtures not found at {root} (set PORTRAITLAB_FIXTURES)")
    return root


@pytest.fixture
def compose_cfg():
    return compose


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small SynthFaces dataset (FOMM layout, 64², with hands and cross-identity GT), rendered once per session."""
    from datamodules.config import SynthConfig
    from datamodules.synthfaces import render_dataset

    root = tmp_path_factory.mktemp("synthfaces")
    cfg = SynthConfig(num_identities=8, clips_per_identity=2, num_frames=12, resolution=64, hand_prob=0.5,
                      num_cross_pairs=4, seed=0)
    render_dataset(root, cfg)
    return root


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless-capable Chromium binary for Playwright (skips, naming what to install, when there is none)."""
    pytest.importorskip("playwright", reason="pip install playwright (a project dependency)")
    return find_chromium()
