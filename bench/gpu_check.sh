#!/usr/bin/env bash
# The one-shot accelerator check (~8 min on one H100/H200): real-size DM update step time, MFU and peak memory
# at 1024 px with G=8, and the LM decode's fraction of the HBM roofline. Needs only the README's install.
#   bash bench/gpu_check.sh [gpu_check.json]
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}  # the peak, not 75 %, is what is measured
"${PYTHON:-python}" -m unirl_jax.bench.gpu_check --json "${1:-gpu_check.json}"
