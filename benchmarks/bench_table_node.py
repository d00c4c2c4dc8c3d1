"""Memory of the data table on one node: parsed once per node and shared (`load_table_once_per_node`,
what training does) against parsed by every rank (`load_table`), side by side under torchrun.

    python benchmarks/bench_table_node.py [--rows 10M] [--ranks 2,4] [--dir /tmp/bench_table] [--no-write]

The CSV (`path` + `caption`) is the one `bench_table.py` writes (and reuses). For each rank count
and each way of loading, one `torchrun --standalone --nproc_per_node=N` job (gloo) loads the table
on every rank and reports, per rank: the seconds until its table was ready, and its private memory
(USS: Private_Clean + Private_Dirty of /proc/self/smaps_rollup) before and after. Node memory of
the table = the ranks' private growth summed, plus the shared copy (held once, in /dev/shm or
$OPENSORA_VAE_SHARED_TABLE_DIR, while mapped). The section replaces this script's part of
benchmarks/RESULTS.md (`results_md.write_section`: numbers are never typed by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SECTION = "bench_table_node"
MODES = {"per node (shared)": "node", "per rank": "rank"}


def rank_measure(csv: str, mode: str, report: str) -> int:
    """One rank of the torchrun job: load, measure, write ``report.<rank>``."""
    from memory import uss_mb  # benchmarks/memory.py (on PYTHONPATH)

    from opensora_vae import distributed
    from opensora_vae.data.table import load_table, load_table_once_per_node

    distributed.init_distributed()
    distributed.barrier()
    before = uss_mb(os.getpid())
    start = time.perf_counter()
    table = load_table_once_per_node(csv) if mode == "node" else load_table(csv)
    seconds = time.perf_counter() - start
    import numpy as np

    shared = table.nbytes if isinstance(table.data, np.memmap) else 0
    out = {"rank": int(os.environ["RANK"]), "rows": len(table), "load_s": seconds, "uss_before_mb": before,
           "uss_after_mb": uss_mb(os.getpid()), "shared_mb": shared / 2**20}
    Path(f"{report}.{out['rank']}").write_text(json.dumps(out))
    distributed.barrier()
    return 0


def run_job(csv: Path, ranks: int, mode: str) -> list[dict]:
    report = Path(tempfile.mkdtemp(prefix="bench_table_node_")) / "report"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)]), "OMP_WAIT_POLICY": "PASSIVE",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", __file__,
           "--rank-child", str(csv), mode, str(report)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return [json.loads(Path(f"{report}.{r}").read_text()) for r in range(ranks)]


def render(rows: list[tuple[int, str, list[dict]]], args, csv_label: str) -> str:
    lines = ["## Data table on one node: parsed once per node vs by every rank", "",
             f"`python benchmarks/bench_table_node.py --rows {args.rows} --ranks {args.ranks}` "
             f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; the {csv_label}-row "
             "CSV of `bench_table.py`; `torchrun --standalone`, gloo). Ready = the slowest rank's seconds until "
             "its table was usable. Private = the ranks' USS growth while loading, summed; shared = the one "
             "copy in /dev/shm all ranks map; node = private + shared.", "",
             "| ranks | table loaded | ready | private (all ranks) | shared | **node memory** |",
             "|---|---|---|---|---|---|"]
    for ranks, mode, result in rows:
        private = sum(max(0.0, r["uss_after_mb"] - r["uss_before_mb"]) for r in result)
        shared = max(r["shared_mb"] for r in result)
        lines.append(f"| {ranks} | {mode} | {max(r['load_s'] for r in result):.1f} s | {private:.0f} MB | "
                     f"{shared:.0f} MB | **{private + shared:.0f} MB** |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10M")
    parser.add_argument("--ranks", default="2,4", help="processes per node, e.g. 2,4")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "bench_table"))
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    parser.add_argument("--rank-child", nargs=3, metavar=("CSV", "MODE", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_child:
        from opensora_vae.cli import run_cli

        run_cli(lambda argv: rank_measure(*argv), args.rank_child)
    from bench_table import label, parse_count, write_table

    rows = parse_count(args.rows)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv, _ = write_table(folder, rows)
    results = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        for name, mode in MODES.items():
            results.append((ranks, name, run_job(csv, ranks, mode)))
            print(ranks, name, json.dumps(results[-1][2]), flush=True)
    section = render(results, args, label(rows))
    print(section)
    if not args.no_write:
        from results_md import write_section

        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
