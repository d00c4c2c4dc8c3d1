#!/usr/bin/env bash
# Does the code or the CPU move the quickstart's numbers? Runs the quickstart with short settings
# (QUICK_ARGS) on each commit given, on this CPU with its own kernels, then the first commit
# again with torch limited to AVX2 kernels (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA: what a CPU
# without AVX-512 runs), one thread each, one run after another; then writes the
# "quickstart-trajectory" section of benchmarks/RESULTS.md from the runs' summaries.
#
#   bash examples/quickstart/trajectory_runs.sh e7f2af7 4061024      (~10 min per run on 2 loaded cores)
#
# Each commit runs in a detached worktree under $WORK with this checkout's examples/quickstart/
# driver (older drivers record no commit or CPU), so its summary says "<commit>+dirty"; the
# package, scripts and configs, which decide the numbers, are the commit's own.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
WORK=${WORK:-/tmp/quickstart_trajectory}
QUICK_ARGS=${QUICK_ARGS:---stage0-steps 20 --steps 4 4 4}
[ $# -ge 1 ] || { echo "usage: $0 COMMIT [COMMIT ...]" >&2; exit 2; }
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$WORK"
summaries=()
run() {  # name tree [env assignments...]
  local name=$1 tree=$2; shift 2
  echo "== $name ($(date -u +%T))"
  # shellcheck disable=SC2086
  (cd "$tree" && env PYTHONPATH="$tree" "$@" "$PY" -m examples.quickstart --out-dir "$WORK/runs/$name" $QUICK_ARGS) \
    > "$WORK/$name.log" 2>&1 || { echo "$name failed: see $WORK/$name.log" >&2; exit 1; }
  summaries+=("$WORK/runs/$name/summary.json")
}
for commit in "$@"; do
  tree=$WORK/tree_$commit
  [ -d "$tree" ] || git worktree add --detach "$tree" "$commit" > /dev/null
  cp examples/quickstart/*.py "$tree/examples/quickstart/"
  # The driver's stage 0 imports preflight.py; commits from before it existed get this checkout's
  # copy, the others keep their own (the package must be the commit's, see above).
  git cat-file -e "$commit:opensora_vae/training/preflight.py" 2>/dev/null ||
    cp opensora_vae/training/preflight.py "$tree/opensora_vae/training/"
  run "${commit}_native" "$tree"
done
run "$1_avx2" "$WORK/tree_$1" ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
"$PY" -m examples.quickstart.update_results "${summaries[@]}" --section quickstart-trajectory --intro \
  "Code or CPU? The quickstart with short settings (\`$QUICK_ARGS\`) on commits $*, one thread each, on this CPU's own kernels, then on AVX2 kernels only (\`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2\`, what a CPU without AVX-512 runs), by \`bash examples/quickstart/trajectory_runs.sh $*\`. Differences grow with the number of steps, and the full quickstart trains many more."
