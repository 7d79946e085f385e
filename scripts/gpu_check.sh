#!/usr/bin/env bash
# One GPU, under 8 minutes: bf16 training samples/s, peak memory and the drift field's share of a
# step for the B/2 latent recipe, and one-step sampling images/s at batch 1 and 64, 256 and
# 1024 px (random weights, synthetic inputs; nothing is downloaded). Writes one JSON file.
#
#   scripts/gpu_check.sh --out gpu_check.json          # on a GPU machine
#   scripts/gpu_check.sh --tiny --out /tmp/check.json  # toy sizes on CPU (the test suite runs this)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
# A hard stop well inside the 8 minutes a check may take: a hung collective must not eat the budget.
exec timeout 470 python "$here/gpu_check.py" "$@"
