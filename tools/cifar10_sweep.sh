#!/usr/bin/env bash
# Round 1 of the CIFAR-10 recipe sweeps: runs side by side on one GPU, each changing one thing
# from a baseline, scored by kNN (k=20) every 5 epochs on the held-out tenth of the training
# folder (never on a test split). Results: docs/benchmarks.md, "CIFAR-10 recipe sweeps".
#
#   bash tools/cifar10_sweep.sh CIFAR_TAR_GZ OUT_DIR [MINUTES]
#
# CIFAR_TAR_GZ holds train/<class>/*.jpg; MINUTES is the training time of each run (default 5).
# PYTHON is the interpreter (default python3); ONLY=N runs only the first N runs; EXTRA="--opt
# value ..." is added to every run. A smoke test on the CPU: PYTHON=.venv/bin/python ONLY=2
# EXTRA="--device cpu --arch vit_nano --depth 2 --n-train 512 --n-eval 256 --batch-size 64"
# bash tools/cifar10_sweep.sh ... 0.3
set -euo pipefail
tar_gz=$1
out=$2
minutes=${3:-5}
data=$(mktemp -d)
tar xzf "$tar_gz" -C "$data"

runs=(
  --run base ""
  --run blur-before-fix "--blur-sigma 0.1,1.0"
  --run lr-2x "--lr 1e-3"
  --run momentum-0.996 "--teacher-momentum 0.996"
  --run local-0.2-0.5 "--local-scale 0.2,0.5"
  --run head-1024 "--out-dim 1024 --hidden-dim 512"
  --run center-0.5 "--center-momentum 0.5"
  --run drop-path-0 "--drop-path 0"
  --run temp-warmup "--teacher-temp 0.07 --warmup-teacher-temp 0.04 --warmup-teacher-temp-epochs 5"
  --run sinkhorn "--centering sinkhorn"
  --run koleo "--koleo-weight 0.1"
  --run ibot "--ibot true"
)
if [[ -n "${ONLY:-}" ]]; then runs=("${runs[@]:0:$((3 * ONLY))}"); fi

# shellcheck disable=SC2086  # EXTRA is a list of options
"${PYTHON:-python3}" -m minidino sweep --preset cifar10 --name cifar10-round1 --out-dir "$out" \
  --dataset folder --data-path "$data/train" --data-mode device --knn-every 5 \
  --batch-size 512 --warmup-epochs 2 --teacher-momentum 0.99 ${EXTRA:-} \
  --minutes "$minutes" "${runs[@]}"
rm -rf "$data"
