#!/usr/bin/env bash
# The GPU check, in one go, for a machine with CUDA torch but maybe none of dream3d's other
# packages and no network:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. installs dream3d's other dependencies from wheelhouse/ when it travels with the tree
#    (`pip download -d wheelhouse ...` beforehand; torch itself is never reinstalled),
# 2. runs the CUDA tests (pytest -m cuda: gsplat vs the CPU rasteriser, nvdiffrast vs the torch
#    rasteriser), 3. times the CPU presets on CUDA with the embedded prior and one SDS step of a
#    Stable-Diffusion-2.1-sized UNet and VAE (random weights, fp16, 512^2): a table in OUT_DIR.
# Without CUDA it says so in one line and exits 0, running nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-gpu-check}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "gpu_check: torch sees no CUDA device here; nothing was run"
  exit 0
fi
mkdir -p "$OUT"
if [ -d wheelhouse ]; then
  "$PY" -m pip install --quiet --no-index --find-links wheelhouse -e ".[dev]" 2>&1 | tail -3
fi
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee "$OUT/device.txt"
status=0
timeout 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests.txt" | tail -5 || status=1
timeout 300 "$PY" benchmarks/gpu_timings.py --device cuda 2>&1 | tee "$OUT/timings.md" || status=1
exit $status
