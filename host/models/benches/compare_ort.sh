#!/usr/bin/env bash
# Installs onnxruntime from PyPI into a venv and times the fixture models on it,
# batch 1, one thread. Writes $OUT (default target/bench/ort.json).
#
#   host/models/benches/compare_ort.sh [MODELS_DIR]
#
# Env: VENV (default target/ort-venv), ORT_VERSION (default: latest), RUNS, WARMUP, OUT.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
models="${1:-$root/tests/fixtures/models}"
venv="${VENV:-$root/target/ort-venv}"
out="${OUT:-$root/target/bench/ort.json}"
mkdir -p "$(dirname "$out")"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "onnxruntime${ORT_VERSION:+==$ORT_VERSION}" numpy
fi
specs=()
for m in digits_cnn:digits_test mobilenetv2:mobilenetv2_input efficientnet_lite0:efficientnet_lite0_input sunspots_lstm:sunspots_test_windows; do
    name="${m%%:*}"; npy="${m#*:}"
    [ -f "$models/$name.onnx" ] || { echo "skip $name (no $models/$name.onnx)" >&2; continue; }
    if [ -f "$models/$npy.npy" ]; then specs+=("$models/$name.onnx:$models/$npy.npy"); else specs+=("$models/$name.onnx"); fi
done
OMP_NUM_THREADS=1 "$venv/bin/python" "$root/host/models/benches/ort_bench.py" "$out" "${specs[@]}"
echo "wrote $out" >&2
