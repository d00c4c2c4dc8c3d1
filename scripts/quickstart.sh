#!/usr/bin/env bash
# One command on a fresh clone: set up .venv, then run the whole workflow on the bundled sample
# (stage 0 -> stages 1, 2, 3 -> inference -> eval) on CPU. Extra arguments go to the quickstart
# (examples/quickstart/, see `python -m examples.quickstart --help`).
# QUICKSTART_SKIP_SETUP=1 skips the environment setup when .venv is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${QUICKSTART_SKIP_SETUP:-0}" != "1" ] || [ ! -x .venv/bin/python ]; then
  bash scripts/setup_env.sh
fi
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
exec python -m examples.quickstart "$@"
