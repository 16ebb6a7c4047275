#!/usr/bin/env bash
# The GPU benchmark, prepared for one H200 through the library's device tool (under 5 minutes):
# operator-stage step throughput and MFU, fp32 vs bf16, compile off and on, peak memory.
# The device image has torch but not pydantic: carry its wheels as .whl/ (see bench/RESULTS.md).
#   device run: command="bash bench/gpu.sh", carry=[".whl"], timeout_s=420
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
mkdir -p "${OUT:-bench/out}"
timeout 360 python3 bench/gpu_step.py --steps 50 | tee "${OUT:-bench/out}/gpu_step.jsonl"
