#!/usr/bin/env bash
# The GPU check of issue 13 §4 in one command (< 8 min on one H200): full-size stage-1/stage-3
# training steps in bf16 under torchrun (NCCL, DDP and FSDP2, with/without grad_checkpoint),
# resume exactness, inference + eval on the bundled clip; one JSON (its path is printed last).
#
#   bash benchmarks/gpu_check.sh                       # CUDA
#   bash benchmarks/gpu_check.sh --device cpu          # the same path on the tiny configs
#   GPU_CHECK_WEIGHTS=shared/weights bash benchmarks/gpu_check.sh   # where offline weights are
#
# Options: see `python benchmarks/gpu_check.py --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
exec python benchmarks/gpu_check.py "$@"
