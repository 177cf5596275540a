#!/usr/bin/env bash
# The GPU suite on a lent device machine (the `device` tool runs this in a copy of the repository):
#   bash benchmarks/gpu_suite.sh [extra gpu_suite arguments]
# Installs slam_jax without touching the machine's jax/torch, then writes every part's JSON under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_suite_out}"
mkdir -p "$OUT"
python -m pip install --quiet --no-deps -e . >"$OUT/install.log" 2>&1 || echo "pip install -e . failed (see install.log)"
python -m pip install --quiet ml-collections grain orbax-checkpoint optax flax librosa soundfile espeakng-loader \
  tensorboardX >>"$OUT/install.log" 2>&1 || echo "some dependencies did not install (see install.log)"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
python -m benchmarks.gpu_suite --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
