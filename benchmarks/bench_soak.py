"""Soak test: does a long training run stay flat in memory? (issue 24)

    python benchmarks/bench_soak.py [--steps 6000] [--workers 2] [--every 1.0] [--no-write]

Runs the real `Trainer` (tiny stage-1 config, 8x8 images, a model smaller than tiny, 1-frame steps so a step is cheap)
for `--steps` steps with `--workers` DataLoader workers, checkpoints every 500 steps
(`keep_last_ckpts=2`: saving and pruning run all the time), a preview every 250 steps and
TensorBoard scalars every step. One epoch is longer than the run, so the workers live for all
of it. A thread samples, every `--every` seconds, the step reached and the memory of the main
process (RSS) and of each worker (RSS, and USS = its private pages from /proc/PID/smaps_rollup:
a forked worker's RSS also counts pages it shares with the main process), and the main
process's Python heap blocks in use after a `gc.collect()` (`sys.getallocatedblocks()`: per-step
Python data would grow it).

Reported: for each process, the memory after warm-up (the first `--warmup` fraction of steps,
which also fills the bounded per-step windows: 1000 steps of history) and at the end, and the
least-squares slope of memory against step over the rest, in MB per 10k steps. A flat run has a
slope within noise (|slope| of a few MB per 10k steps, against the 320 MB by step 380k that an
unbounded history cost). The table replaces this script's section of benchmarks/RESULTS.md
(`results_md.write_section`).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from opensora_vae.cli import setup_logging  # noqa: E402  (first: sets the CPU thread policy)

from memory import child_pids, rss_mb, uss_mb  # noqa: E402  benchmarks/memory.py

SECTION = "bench_soak"
PAGE_KB = 1024


class Sampler(threading.Thread):
    """Samples (step, main RSS, {worker pid: (RSS, USS)}) every `every` seconds."""

    def __init__(self, trainer, every: float):
        super().__init__(daemon=True)
        self.trainer, self.every = trainer, every
        self.samples: list[tuple[int, float, dict[int, tuple[float, float]]]] = []
        self.blocks: list[tuple[int, int]] = []  # (step, Python heap blocks in use)
        self.stop = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(self.every):
            step = self.trainer.counters.global_step
            workers = {}
            for pid in child_pids(me):
                rss, uss = rss_mb(pid), uss_mb(pid)
                if rss is not None and uss is not None:
                    workers[pid] = (rss, uss)
            main = rss_mb(me)
            if main is not None:
                self.samples.append((step, main, workers))
                gc.collect()  # count what is kept, not garbage waiting for the next full collection
                self.blocks.append((step, sys.getallocatedblocks()))


def slope_per_10k(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of memory (MB) against step, in MB per 10k steps."""
    import numpy as np

    steps = np.array([p[0] for p in points], dtype=float)
    values = np.array([p[1] for p in points], dtype=float)
    if len(points) < 3 or np.ptp(steps) == 0:
        return float("nan")
    return float(np.polyfit(steps, values, 1)[0] * 10_000)


def make_table(folder: Path, rows: int) -> Path:
    """A CSV of `rows` rows over four 16x16 PNGs cut from the bundled clip (rows repeat files)."""
    import numpy as np

    from opensora_vae.data import read_video_frames, write_image

    clip = REPO / "assets" / "media" / "city_cc0_256_17f.mp4"
    names = []
    for i, frame in enumerate(read_video_frames(clip, [0, 5, 10, 16])):
        write_image(folder / f"frame{i}.png", frame)
        names.append(f"frame{i}.png")
    csv = folder / "soak.csv"
    csv.write_text("path\n" + "\n".join(names[i % 4] for i in range(rows)) + "\n")
    return csv


def run(steps: int, workers: int, every: float, warmup: float) -> dict:
    import numpy as np

    from opensora_vae.config import load_config
    from opensora_vae.training import Trainer

    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp:
        tmp = Path(tmp)
        csv = make_table(tmp, rows=steps + 100)
        cfg = load_config(REPO / "configs/vae/train/tiny/stage1.py", cfg_options={
            # Smaller than tiny: the per-step bookkeeping, not the model, is what is measured.
            "model.temporal.filters": 8, "model.temporal.num_groups": 4,
            "dataset.image_size": [8, 8], "num_workers": workers, "max_steps": steps, "ckpt_every": 500,
            "keep_last_ckpts": 2, "preview_every": 250, "log_every": 1000, "epochs": 1},
            cli={"outputs": str(tmp / "out"), "data_path": str(csv)})
        cfg.model.spatial.config.update(block_out_channels=[8, 8, 8, 8], norm_num_groups=4)
        trainer = Trainer(cfg)
        sampler = Sampler(trainer, every)
        sampler.start()
        start = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
    samples = sampler.samples
    cut = int(steps * warmup)
    later = [s for s in samples if s[0] >= cut]
    if len(later) < 3:
        raise SystemExit(f"only {len(later)} samples after warm-up: run more --steps or sample more often")
    processes = {"main": [(s[0], s[1]) for s in later]}
    # Workers are numbered in start order; a worker's series is its (pid) samples after warm-up.
    pids = sorted({pid for s in samples for pid in s[2]})
    for n, pid in enumerate(pids):
        for kind, k in (("RSS", 0), ("USS", 1)):
            series = [(s[0], s[2][pid][k]) for s in later if pid in s[2]]
            if len(series) >= 3:
                processes[f"worker {n} {kind}"] = series
    rows = []
    for name, series in processes.items():
        values = np.array([v for _, v in series])
        rows.append({"process": name, "after_warmup": series[0][1], "end": series[-1][1],
                     "max": float(values.max()), "slope": slope_per_10k(series)})
    blocks = [b for b in sampler.blocks if b[0] >= cut]
    return {"steps": result.global_step, "seconds": seconds, "samples": len(samples), "warmup_step": cut,
            "workers": len(pids), "rows": rows, "blocks": (blocks[0][1], blocks[-1][1], slope_per_10k(blocks))}


def markdown(res: dict, args) -> str:
    lines = [
        "## Soak: memory over a long training run (issue 24)",
        "",
        f"`python benchmarks/bench_soak.py --steps {args.steps} --workers {args.workers}` "
        f"({os.cpu_count()} cores, {platform.processor() or platform.machine()}; the real `Trainer` on the "
        f"tiny stage-1 config at 8x8 with 8 filters, 1-frame steps, {res['workers']} DataLoader workers, TensorBoard every "
        "step, a preview every 250 steps, a checkpoint every 500 with `keep_last_ckpts=2`). "
        f"{res['steps']} steps in {res['seconds']:.0f} s; memory sampled {res['samples']} times; the slope is "
        f"the least-squares fit of memory against step after warm-up (step {res['warmup_step']}: the bounded "
        "per-step windows, e.g. the last 1000 steps of history, are full by then). USS = a worker's private "
        "pages (its RSS also counts pages shared with the main process).",
        "",
        "| process | after warm-up | end | max | slope (MB per 10k steps) |",
        "|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        lines.append(f"| {row['process']} | {row['after_warmup']:.1f} MB | {row['end']:.1f} MB | "
                     f"{row['max']:.1f} MB | {row['slope']:+.2f} |")
    first, last, slope = res["blocks"]
    lines += ["", f"Python heap blocks in use by the main process after `gc.collect()` (`sys.getallocatedblocks()`, what per-step "
              f"Python data would grow): {first} after warm-up, {last} at the end, slope {slope:+.0f} blocks per "
              "10k steps.",
              "", "Before (issue 24): the per-step history alone grew ~875 bytes a step (~8.8 MB per 10k "
              "steps, ~320 MB by step 380k), and every distinct unreadable path was kept for the run."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction of steps left out of the slope")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    setup_logging()
    res = run(args.steps, args.workers, args.every, args.warmup)
    text = markdown(res, args)
    print(text)
    if not args.no_write:
        from results_md import write_section

        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
