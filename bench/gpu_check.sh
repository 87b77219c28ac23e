#!/usr/bin/env bash
# The GPU check, 8 minutes or less on one H100/H200: `make test-gpu` (ZeRO-2/3 bf16 training of
# a tiny and a Qwen2.5-0.5B-shaped decoder, ~3 min), bench/gpu_throughput.py on the 0.5B shape
# (pairs/s, tokens/s, peak memory, MFU under ZeRO-2 and ZeRO-3, ~2 min) and bench/gpu_eval.py
# (evaluation pairs/s in float32 and under bf16 autocast, ~1 min). Results go to $OUT (default
# outputs/gpu-check/): gpu_throughput.json, gpu_eval.json and the logs. Without CUDA it says so
# and exits 0; with CUDA it exits non-zero when a step fails.
#
#     bash bench/gpu_check.sh            # from the repository root, after `make install`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-outputs/gpu-check}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: skipped, no CUDA device"
  exit 0
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start))s"
  return "$rc"
}

if [ -f .venv/.installed ]; then
  step test-gpu 240 make test-gpu
else  # the same tests, with the interpreter given in $PY
  step test-gpu 240 "$PY" -m pytest tests/gpu -q -m gpu -s
fi
step gpu_throughput 150 "$PY" bench/gpu_throughput.py --cases qwen2.5-0.5b --steps 20 --json "$OUT/gpu_throughput.json"
step gpu_eval 90 "$PY" bench/gpu_eval.py --json "$OUT/gpu_eval.json"
echo "gpu_check: done; results in $OUT"
