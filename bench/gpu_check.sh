#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: does the trainer use it, and what is the service/in-process ratio
# once the step no longer hides the sampling cost? One short throughput run (2 servers on loopback,
# 1 round of 2 epochs) on the GPU, bounded to 5 minutes.
#     bash bench/gpu_check.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
PY=.venv/bin/python
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi); nothing to measure" >&2
    exit 2
fi
"$PY" - <<'PY'
import torch
from workflows.train import resolve_device
assert torch.cuda.is_available(), f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)};"
      f" device auto -> {resolve_device('auto')}")
PY
timeout 300 "$PY" -m bench.training_throughput --device cuda --servers 2 --rounds 1 --epochs 2 \
    --trainers 1 --skip-trainers --skip-accuracy
