"""Issue 17: one CLI style (Hydra console scripts) and Trainer/callbacks built from config."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})


def _hydra_apps() -> set[str]:
    """``experiments.<module>:main`` for every function decorated with ``@hydra.main`` under experiments/."""
    apps = set()
    for path in sorted((ROOT / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and ast.unparse(d.func) == "hydra.main" for d in node.decorator_list):
                apps.add(f"experiments.{path.stem}:{node.name}")
    return apps


def test_every_hydra_entry_point_has_a_console_script_that_resolves():
    scripts = _scripts()
    apps = _hydra_apps()
    assert apps >= {"experiments.train:main", "experiments.evaluate:main", "experiments.animate:main"}
    missing = apps - set(scripts.values())
    assert not missing, f"@hydra.main apps without a [project.scripts] entry in pyproject.toml: {sorted(missing)}"
    for name, target in scripts.items():
        assert name.startswith("portraitlab-"), name
        module, _, attr = target.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        assert callable(fn), f"{name} = {target} is not callable"


def test_console_script_target_answers_hydra_completion_and_help():
    """What `portraitlab-train -sc install=bash` / `--hydra-help` run: the script's target with that argv."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    target = _scripts()["portraitlab-train"]
    module, _, attr = target.partition(":")
    code = f"import sys; sys.argv = ['portraitlab-train'] + sys.argv[1:]; from {module} import {attr}; {attr}()"
    out = subprocess.run([sys.executable, "-c", code, "-sc", "install=bash"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "complete" in out.stdout and "portraitlab-train" in out.stdout
    out = subprocess.run([sys.executable, "-c", code, "--hydra-help"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Hydra" in out.stdout
