"""Compose the real Hydra configs from Python exactly as the CLI does (notebooks, tests, scripts).

    from experiments.compose import compose
    cfg = compose("train", ["experiment=mrfa_synthfaces", "trainer.max_steps=10", "run_dir=/tmp/run"])
"""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def compose(config_name: str = "train", overrides: list[str] | None = None, return_hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from experiments.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []),
                             return_hydra_config=return_hydra_config)
