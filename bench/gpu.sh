#!/usr/bin/env bash
# The GPU benchmark, prepared for one H200 through the library's device tool (under 5 minutes):
# the operator stage's step run by the real trainer (StageTrainer over a LocalContext on cuda),
# throughput and MFU, fp32 vs bf16, compile off and on, peak memory.
# The trainer imports pydantic, pyyaml, pyarrow and h5py; whichever of them the device image lacks
# must be carried as wheels for its Python in .whl/, e.g. here:
#   .venv/bin/pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --no-deps -d .whl pydantic pydantic-core annotated-types typing-inspection pyyaml pyarrow h5py
#   device run: command="bash bench/gpu.sh", carry=[".whl"], timeout_s=420
set -euo pipefail
cd "$(dirname "$0")/.."
missing=$(python3 - <<'EOF'
import importlib.util
print(" ".join(m for m in ("pydantic", "yaml", "pyarrow", "h5py") if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "device image lacks: $missing; installing from .whl/"
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/ (see the top of bench/gpu.sh)" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
mkdir -p "${OUT:-bench/out}"
timeout 360 python3 bench/gpu_step.py --steps 50 | tee "${OUT:-bench/out}/gpu_step.jsonl"
