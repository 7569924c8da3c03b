#!/usr/bin/env bash
# GPU checks in one go (≤ 8 minutes on one H100): the gpu-marked tests, then the benchmark. Runs with the plain
# python3 of a GPU machine (no .venv) once benchmarks/gpu_wheels.sh's wheels are unpacked to /tmp/site:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
#     export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu.sh
# Outputs: the test summary, per-method step time / peak memory / samples/s, the evaluation's frames/s;
# $OUT/gpu_bench.json when $OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE WANDB_MODE=disabled WANDB_SILENT=true HYDRA_FULL_ERROR=1 PYTHONUNBUFFERED=1
export PORTRAITLAB_RUNS=${PORTRAITLAB_RUNS:-/tmp/portraitlab_runs}
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
timeout 200 python3 -m pytest -m gpu tests/gpu -q -s -p no:cacheprovider -o addopts="" 2>&1 | tee ${OUT:-/tmp}/gpu_pytest.log | grep -vE "Warning|warn" | tail -60
echo "== benchmark"
timeout 210 python3 -m benchmarks.gpu --steps 8 ${OUT:+--json "$OUT/gpu_bench.json"}
