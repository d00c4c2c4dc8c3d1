"""Memory and load time of the training data table: the path buffer (`data/table.py`) against the
pandas table plus a list of path strings that `VideoDataset` held before (its code is taken from
git at OLD_REV, not rewritten here), side by side.

    python benchmarks/bench_table.py [--rows 1M,2M,10M,30M] [--old-max-rows 10M] [--reads 400]
                                     [--workers 4] [--dir /tmp/bench_table] [--no-write]

For each row count it writes a CSV with a `path` and a `caption` column (streamed in batches of 1M
rows with pyarrow, so 30M rows take seconds), then, in a fresh process per (implementation, rows):
- load: seconds to build `VideoDataset` from the CSV, and the process's peak RSS (ru_maxrss, which
  includes the ~0.4 GB of torch and the interpreter; the RSS right before loading is shown too);
- workers: a DataLoader with `--workers` forked workers reads `--reads` random rows; the worst
  worker's USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) after the first batch and
  after all reads. Every row names the bundled 17-frame clip through a unique path (`clips/000123/
  clip_000123456/../../../clip.mp4`), so a read is a real decode (17 frames, resized to 64x64)
  and the per-row strings are as distinct as in a real table.
The old implementation is run up to `--old-max-rows` (it needs ~0.35 KB per row). The table
replaces this script's section of benchmarks/RESULTS.md (`results_md.write_section`: numbers are
never typed by hand).
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

from memory import child_pids, rss_mb, uss_mb  # benchmarks/memory.py (this script's folder)

REPO = Path(__file__).resolve().parents[1]
OLD_REV = "eb33e14"  # the last commit whose VideoDataset kept the pandas table and a list of paths
SECTION = "bench_table"
GEN_BATCH = 1_000_000
CLIP = REPO / "assets" / "media" / "city_cc0_256_17f.mp4"  # every row reads it: 17 frames, 256x256


def parse_count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}K"


# ----------------------------------------------------------------------------- table generation


def write_table(folder: Path, rows: int) -> tuple[Path, float]:
    """A CSV of `rows` rows (path, caption), written batch by batch; (path, seconds)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    clip = folder / "clip.mp4"
    if not clip.exists():
        clip.symlink_to(CLIP)
    path = folder / f"table_{label(rows)}.csv"
    timing = path.with_name(path.name + ".seconds")  # written last: the CSV is complete
    if path.is_file() and timing.is_file():
        return path, float(timing.read_text())
    start = time.perf_counter()
    words = pa.array(["a city street at dusk with cars passing", "waves breaking on a rocky shore",
                      "a person walking a dog through a park", "time-lapse of clouds over mountains"])
    schema = pa.schema([("path", pa.string()), ("caption", pa.string())])
    tmp = path.with_suffix(".tmp")
    with pacsv.CSVWriter(tmp, schema) as writer:
        for first in range(0, rows, GEN_BATCH):
            idx = pa.array(np.arange(first, min(rows, first + GEN_BATCH), dtype=np.int64))
            text = pc.cast(idx, pa.string())
            group = pc.utf8_lpad(pc.cast(pc.divide(idx, 1000), pa.string()), 6, "0")
            paths = pc.binary_join_element_wise("clips/", group, "/clip_", pc.utf8_lpad(text, 9, "0"),
                                                "/../../../clip.mp4", "")
            captions = pc.binary_join_element_wise(
                "clip ", text, ": ", pc.take(words, pc.remainder(idx, len(words))),
                ", filmed handheld in natural light, slow camera pan", "")
            writer.write_batch(pa.record_batch([paths, captions], schema=schema))
    tmp.rename(path)
    seconds = time.perf_counter() - start
    timing.write_text(f"{seconds}\n")
    return path, seconds


# ----------------------------------------------------------------------------- one measurement


def old_dataset_module():
    """`opensora_vae.data.dataset` as it was at OLD_REV, imported beside today's package."""
    import importlib.util

    source = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_REV}:opensora_vae/data/dataset.py"],
                            check=True, capture_output=True, text=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="bench_table_old_"))
    (folder / "dataset.py").write_text(source)
    name = "opensora_vae.data._dataset_at_old_rev"  # inside the package: its relative imports resolve
    spec = importlib.util.spec_from_file_location(name, folder / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Implementation -> (where VideoDataset comes from, where build_dataloader comes from). The mixed
# one separates the two changes: the table itself, and the workers' fixed malloc thresholds.
IMPLS = {"old": ("old", "old"), "new table, old loader": ("new", "old"), "new": ("new", "new")}


def measure(impl: str, csv: str, reads: int, workers: int) -> dict:
    import importlib
    import resource

    import numpy as np

    modules = {"new": importlib.import_module("opensora_vae.data.dataset")}
    if "old" in IMPLS[impl]:
        modules["old"] = old_dataset_module()
    table_from, loader_from = (modules[k] for k in IMPLS[impl])
    before = rss_mb()
    start = time.perf_counter()
    # The current VideoDataset also takes the read timeout (None: no limit); the old one has none.
    extra = {"read_timeout_s": None} if table_from is modules["new"] else {}
    ds = table_from.VideoDataset(csv, num_frames=17, frame_interval=1, image_size=64, transform_name="center",
                                 seed=42, max_retries=1, **extra)
    seconds = time.perf_counter() - start
    result = {"impl": impl, "rows": len(ds), "load_s": seconds, "rss_before_mb": before,
              "rss_after_mb": rss_mb(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if reads:
        indices = np.random.default_rng(0).integers(0, len(ds), reads).tolist()
        loader = loader_from.build_dataloader(ds, batch_size=1, num_workers=workers, sampler=indices,
                                              drop_last=False)
        it = iter(loader)
        next(it)
        pids = child_pids()
        result["uss_first_mb"] = max(uss_mb(p) for p in pids)
        for _ in range(reads - 1):
            next(it)
        result["uss_last_mb"] = max(uss_mb(p) for p in pids)
        result["workers"] = len(pids)
        del it, loader
    return result


def run_child(impl: str, csv: Path, reads: int, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", impl, str(csv), "--reads", str(reads), "--workers", str(workers)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def render(results: list[dict], gens: dict[int, float], args, skipped_old: list[int]) -> str:
    lines = ["## Data table: 1M–30M rows, main-process load and DataLoader worker memory", "",
             f"`python benchmarks/bench_table.py --rows {args.rows} --old-max-rows {args.old_max_rows} "
             f"--reads {args.reads} --workers {args.workers}` "
             f"({os.cpu_count()} cores; CSV of `path` + `caption`; old = `VideoDataset` and `build_dataloader` "
             f"at {OLD_REV}: pandas table + list of path strings; new = the `data/table.py` path buffer and "
             "workers with fixed malloc thresholds; the middle row has the new table with the old loader). "
             "Peak RSS includes torch and the interpreter (RSS before loading in brackets). Worker USS: the "
             f"worst of {args.workers} forked workers after the first batch → after {args.reads} random reads "
             "(each a real 17-frame decode).", "",
             "| rows | CSV written in | impl | load | main peak RSS (before) | worker USS first → last |",
             "|---|---|---|---|---|---|"]
    for r in results:
        uss = f"{r['uss_first_mb']:.0f} → {r['uss_last_mb']:.0f} MB" if "uss_last_mb" in r else "not measured"
        lines.append(f"| {label(r['rows'])} | {gens[r['rows']]:.1f} s | {r['impl']} | {r['load_s']:.1f} s | "
                     f"{r['peak_rss_mb']:.0f} MB ({r['rss_before_mb']:.0f}) | {uss} |")
    if skipped_old:
        lines += ["", f"Old implementation not run at {', '.join(label(n) for n in skipped_old)} rows "
                      f"(`--old-max-rows {args.old_max_rows}`: it needs several GB per 10M rows)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1M,2M,10M,30M", help="row counts, e.g. 1M,10M,30M")
    parser.add_argument("--old-max-rows", default="10M", help="largest table the old implementation loads")
    parser.add_argument("--reads", type=int, default=400, help="random reads through the DataLoader (0: none)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "bench_table"),
                        help="where the CSVs are written (kept for reruns)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "CSV"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.reads, args.workers)))
        return
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    old_max = parse_count(args.old_max_rows)
    results, gens, skipped_old = [], {}, []
    for rows in sorted(parse_count(r) for r in args.rows.split(",")):
        csv, gens[rows] = write_table(folder, rows)
        print(f"{label(rows)} rows: {csv} ({csv.stat().st_size / 1e9:.2f} GB, written in {gens[rows]:.1f} s)",
              flush=True)
        impls = list(IMPLS) if rows <= old_max else [i for i in IMPLS if IMPLS[i][0] == "new"]
        if rows > old_max:
            skipped_old.append(rows)
        for impl in impls:
            results.append(run_child(impl, csv, args.reads, args.workers))
            print(json.dumps(results[-1]), flush=True)
    section = render(results, gens, args, skipped_old)
    print(section)
    if not args.no_write:
        from results_md import write_section  # benchmarks/ is on sys.path: this script's folder

        write_section(SECTION, section)


if __name__ == "__main__":
    main()
