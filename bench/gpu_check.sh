#!/usr/bin/env bash
# The GPU check of issue 17 on a device machine: install the carried wheels in .whl/ (nltk, open_clip_torch, ftfy,
# wcwidth, defusedxml: the machine's image lacks them), then run bench/gpu_check.py; the log goes to $OUT too.
#   bash bench/gpu_check.sh [bench/gpu_check.py arguments]
# Device tool: run(command="bash bench/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=480); see README "GPU check".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-checkpoints/gpu_check}
export OUT
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" bench/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
