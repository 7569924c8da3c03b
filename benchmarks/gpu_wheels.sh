#!/usr/bin/env bash
# Wheels of what the GPU machine lacks (Python 3.12, no network there): into .whl/ (gitignored), < 60 MiB.
# The machine has torch (CUDA), lightning, transformers, peft, onnxruntime, opencv-python-headless, scipy,
# scikit-image, pandas, matplotlib, timm; the repo's GPU checks also import hydra-core + omegaconf (+ antlr4
# runtime, sdist-only: built here into a pure-python wheel), diffusers, PyAV (video decode/encode) and, through
# torchmetrics / the eval suite, torch-fidelity and lpips; pytest, rich and diffusers' importlib-metadata. Not shipped: wandb (runs use logger=csv), decord, dlib,
# insightface (no wheel; face metrics are reported as unavailable), litdata (shards stay on CPU tests).
# Then on the GPU machine (one line):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
dl() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$@"
}
dl hydra-core==1.3.2 omegaconf==2.3.0 diffusers==0.42.1 av==18.1.0 torch-fidelity==0.3.0 lpips==0.1.4
# pure-python helpers that image may lack (a duplicate of an installed one is harmless: /tmp/site comes first)
dl pytest==8.4.2 pluggy==1.6.0 iniconfig==2.1.0 rich==14.2.0 markdown-it-py==4.0.0 mdurl==0.1.2 pygments==2.19.2 \
   importlib-metadata==8.7.0 zipp==3.23.0
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) exists only as an sdist: build its pure-python wheel
if ! ls .whl/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1; then
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl antlr4-python3-runtime==4.9.3
fi
ls -la .whl
du -sh .whl
total=$(du -sm .whl | cut -f1)
if [ "$total" -ge 60 ]; then echo "wheels total ${total} MiB >= 60 MiB" >&2; exit 1; fi
