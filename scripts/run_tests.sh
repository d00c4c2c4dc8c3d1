#!/usr/bin/env bash
# Sets up .venv (pip is skipped while .venv matches requirements.txt, see setup_env.sh) and
# runs the whole test suite (CPU, tiny configs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
python -m pytest -q "$@"
