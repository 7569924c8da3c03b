"""The environment contract: conda spec mirrors pyproject's pins; exactly one OpenCV distribution is installed."""
from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_environment_yml_is_a_conda_spec_with_pyprojects_pins():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["name"] == "portraitlab"
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pip_section == pyproject, "environment.yml's pip section and pyproject.toml's dependencies differ"


def test_torch_pins_are_exact_and_installed():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    assert metadata.version("torch").split("+")[0] == "2.14.1"
    assert metadata.version("torchvision").split("+")[0] == "0.29.1"


def test_exactly_one_opencv_distribution():
    names = {d.metadata["Name"].lower() for d in metadata.distributions()}
    cv = sorted(n for n in names if n.startswith("opencv"))
    assert cv == ["opencv-python-headless"], f"several OpenCV builds write cv2/: {cv}"
    import cv2

    assert hasattr(cv2, "resize")
