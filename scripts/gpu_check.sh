#!/usr/bin/env bash
# GPU-ready check (<= 8 minutes): extraction img/s of MedCLIP-ResNet50 at 224, SAE samples/s at the paper's shapes
# (dense and sparse kernels), the tiny-Gemma naming path; one table. On a CPU-only machine (CI) pass --quick.
#   bash scripts/gpu_check.sh                 # on a GPU machine
#   bash scripts/gpu_check.sh --quick --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "${PYTHON:-python}" scripts/gpu_check.py "$@"
