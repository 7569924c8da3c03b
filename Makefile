# portraitlab — the two README commands are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export WANDB_MODE ?= offline
export WANDB_SILENT := true
export HYDRA_FULL_ERROR := 1
# OpenMP's busy-waiting makes small-tensor work 5–20× slower on a shared 2-core machine
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv demo test lint test-slow test-gpu test-all bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "needs Python 3.11 ($(PY)); set PY=..."; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -e .
	# MTCNN of the 3DMM metrics (pyproject extra `threedmm`): without its dependencies, its wheel pins torch<2.3
	$(BIN)/python -m pip install -q --no-deps "facenet-pytorch==2.6.0"
	# insightface pulls opencv-python, which writes the same cv2/ as the headless build: keep exactly one.
	$(BIN)/python -m pip uninstall -q -y opencv-python || true
	$(BIN)/python -m pip install -q --force-reinstall --no-deps "$$($(BIN)/python -m pip freeze | grep -i '^opencv-python-headless==')"
	$(BIN)/python -c "import torch, torchvision, lpips, cv2, av, dlib, lightning, diffusers; print('env ok: torch', torch.__version__)"
	touch $(STAMP)

# README command 1: set up, then the main job (an ablation sweep on embedded SynthFaces data, ending in a table).
demo: venv
	$(BIN)/python -m experiments.demo

# README command 2: the test suite (fast tier; CI runs exactly this).
test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow and not gpu" -q --durations=15

lint: venv
	$(BIN)/ruff check .

test-slow: venv
	$(BIN)/python -m pytest -m "slow and not gpu" -q

# GPU tier (tests/gpu: bf16 / 16-mixed training of every tiny config, full-size forward+backward at batch 1 with
# activation checkpointing; skipped without CUDA). On a GPU machine without this venv (Python 3.12, no network):
#   bash benchmarks/gpu_wheels.sh      # here: missing packages as py3.12 wheels into .whl/ (~41 MiB)
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu.sh
# (benchmarks/gpu.sh runs `python3 -m pytest -m gpu tests/gpu` and `python3 -m benchmarks.gpu`, ≤ 8 minutes.)
test-gpu: venv
	$(BIN)/python -m pytest -m gpu -q

test-all: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python -m benchmarks.decode
	$(BIN)/python -m benchmarks.eval_suite
	$(BIN)/python -m benchmarks.diffusion
	$(BIN)/python -m benchmarks.mrfa

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache
