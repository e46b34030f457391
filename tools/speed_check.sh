#!/usr/bin/env bash
# The fast path's measurements on one CUDA GPU in one command, most important first, each part
# cut short by `timeout` so that what finished is kept (docs/benchmarks.md, "The fast path"):
#   1. tools.bench_train at batch 1024: the per-image DataLoader baseline, the device path eager,
#      compiled and on the fast path, `train` itself on the fast path, the losses, the syncs;
#   2. the same at batch 2048 (a small ViT keeps an H100 or H200 busier with larger batches);
#   3. tools.profile_step at batch 1024, eager and on the fast path (Chrome traces in OUT_DIR);
#   4. tools.bench_train at batch 512;
#   5. a short `cpu-demo` run on the GPU stopped after 30 steps and resumed with --resume auto
#      (resuming is tested on the CPU only otherwise).
#
#   bash tools/speed_check.sh OUT_DIR [SECONDS]
#
# SECONDS is the whole budget (default 540); PYTHON is the interpreter (default python3); BATCH,
# BIG and SMALL replace 1024, 2048 and 512; DEVICE (default cuda) is part 5's device. The compiled kernels are cached on disk between the parts, so
# later parts compile faster. A smoke test on the CPU:
#   PYTHON=.venv/bin/python BATCH=16 BIG=32 SMALL=8 DEVICE=cpu \
#     bash tools/speed_check.sh runs/speed-check 400
set -uo pipefail
out=${1:?usage: bash tools/speed_check.sh OUT_DIR [SECONDS]}
budget=${2:-540}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_FX_GRAPH_CACHE=1
start=$SECONDS

part() {  # part NAME COMMAND...: run with the time that is left, output to the screen and a file
  local name=$1 left
  shift
  left=$((budget - (SECONDS - start)))
  if ((left < 30)); then
    echo "== $name: skipped, $left s left of $budget" | tee -a "$out/summary.txt"
    return
  fi
  echo "== $name (at most $left s): $*"
  timeout --signal=INT --kill-after=10 "$left" "$@" 2>&1 | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader | tee "$out/gpu.txt"
batch=${BATCH:-1024}
part "bench-$batch" "$python" -m tools.bench_train --batch-sizes "$batch"
part "bench-${BIG:-2048}" "$python" -m tools.bench_train --batch-sizes "${BIG:-2048}"
part "profile-$batch" "$python" -m tools.profile_step --batch-size "$batch" \
  --trace-dir "$out/traces"
part "bench-${SMALL:-512}" "$python" -m tools.bench_train --batch-sizes "${SMALL:-512}"
resume=(--preset cpu-demo --device "${DEVICE:-cuda}" --epochs 2 --knn-every 0 --no-progress
        --out-dir "$out/resume" --run-name run)
part resume bash -c '"$@" --max-steps 30 && "$@" --resume auto' _ "$python" -m minidino train \
  "${resume[@]}"
