#!/usr/bin/env bash
# The GPU suite on a GPU machine: bash benchmarks/gpu_suite.sh [python -m benchmarks.gpu_suite arguments]
# Writes under $OUT (default gpu_suite_out): suite/<part>.json as each part ends, log.txt, nvidia-smi.txt.
# Installs nothing from the network: the machine's jax, torch and transformers are used as they are, run from
# the repository root; packages it lacks (grain, ml-collections, ...) can travel as wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_suite_out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
export PYTHONUNBUFFERED=1
python3 -m benchmarks.gpu_suite --out "$OUT/suite" "$@" 2>&1 | tee "$OUT/log.txt"
