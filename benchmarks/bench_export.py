"""Latent export throughput: `scripts/encode_latents.py` (clips decoded in DataLoader workers while
the main process encodes, batched, bf16 shards) against a straightforward loop (decode in the main
process, one clip at a time, `torch.save` per clip), on the same clips in one run, and two such
loops side by side on half the clips each (how much this machine's two cores give for the same
work per clip: the ceiling for overlapping decode and encode); then the export with 1 and 2
processes (torchrun, gloo).

    python benchmarks/bench_export.py [--clips 48] [--workers 2] [--batch-size 4] [--no-write]

Tiny pipeline (configs/vae/train/tiny/stage1.py, random weights) at 64x64, the eval window of
17 frames from the bundled 720x405 clip. The in-process numbers exclude interpreter start-up;
the 1-vs-2-process numbers are whole commands (start-up included). Written into
benchmarks/RESULTS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's opensora_vae
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from opensora_vae.config import load_config  # noqa: E402
from opensora_vae.export import run_export  # noqa: E402
from opensora_vae.inference import InferenceDataset  # noqa: E402
from opensora_vae.export.encode import encode_moments  # noqa: E402
from opensora_vae.models import VideoVAEPipeline  # noqa: E402

CLIP = REPO / "assets" / "media" / "city_cc0_0-99.mp4"
CONFIG = REPO / "configs" / "vae" / "encode" / "tiny.py"
ENTRY = REPO / "scripts" / "encode_latents.py"


def build_inputs(root: Path, clips: int) -> tuple[Path, Path]:
    from tests.helpers import build_tiny_pipeline

    ckpt = root / "ckpt"
    build_tiny_pipeline(seed=0).save_pretrained(ckpt)
    csv = root / "data.csv"
    csv.write_text("path\n" + "\n".join([str(CLIP)] * clips) + "\n")
    return ckpt, csv


def straightforward(ckpt: Path, csv: Path, out: Path) -> float:
    """Decode in the main process, encode one clip, torch.save one file: clips/s."""
    start = time.perf_counter()  # like the export's timing: loading the model counts
    cfg = load_config(CONFIG, kind="encode")
    pipe = VideoVAEPipeline.from_pretrained(ckpt).eval()
    clips = InferenceDataset(csv, whole_video=False, num_frames=cfg.dataset.num_frames,
                             frame_interval=cfg.dataset.frame_interval, image_size=tuple(cfg.dataset.image_size),
                             transform_name=cfg.dataset.transform_name, read_timeout_s=None)
    out.mkdir(parents=True)
    for i in range(len(clips)):
        x = clips[i]["video"][None]
        mean, logvar = encode_moments(pipe, x)
        torch.save({"mean": mean[0], "logvar": logvar[0]}, out / f"{i:06d}.pt")
    return len(clips) / (time.perf_counter() - start)


def loops_side_by_side(ckpt: Path, csv: Path, root: Path) -> float:
    """Two straightforward loops at once, each on half of the clips (forked processes): what this
    machine's two cores give for the loop's own work per clip, i.e. the ceiling of any overlap of
    decoding and encoding that does not also make a clip cheaper. clips/s of both together."""
    rows = csv.read_text().splitlines()[1:]
    halves = []
    for i, part in enumerate((rows[: len(rows) // 2], rows[len(rows) // 2:])):
        halves.append(root / f"half{i}.csv")
        halves[-1].write_text("path\n" + "\n".join(part) + "\n")
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    procs = [ctx.Process(target=straightforward, args=(ckpt, half, root / f"side{i}")) for i, half in enumerate(halves)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a side-by-side loop failed (exit code {p.exitcode})")
    return len(rows) / (time.perf_counter() - start)


def exporter(ckpt: Path, csv: Path, out: Path, workers: int, batch_size: int, clips: int) -> float:
    cfg = load_config(CONFIG, kind="encode", cfg_options={"num_workers": workers, "export.qa_every": 0,
                                                           "export.shard_size": 16},
                      cli={"ckpt_path": str(ckpt), "data_path": str(csv), "save_dir": str(out),
                           "batch_size": batch_size})
    start = time.perf_counter()
    run_export(cfg, verbose=False)
    return clips / (time.perf_counter() - start)


def command(ckpt: Path, csv: Path, out: Path, nproc: int, workers: int, batch_size: int, clips: int) -> float:
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={nproc}"]
    cmd = [*launch, str(ENTRY), str(CONFIG), "--ckpt-path", str(ckpt), "--data-path", str(csv),
           "--save-dir", str(out), "--batch-size", str(batch_size), "--cfg-options", f"num_workers={workers}",
           "export.qa_every=0", "export.shard_size=16"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt, csv = build_inputs(root, args.clips)
        loop = straightforward(ckpt, csv, root / "loop")
        side = loops_side_by_side(ckpt, csv, root)
        ours = exporter(ckpt, csv, root / "export", args.workers, args.batch_size, args.clips)
        one = command(ckpt, csv, root / "one", 1, args.workers, args.batch_size, args.clips)
        # two ranks on two cores: one loader worker each keeps the core count the same
        two = command(ckpt, csv, root / "two", 2, max(1, args.workers // 2), args.batch_size, args.clips)
        same = all((root / "one" / "shards" / p.name).read_bytes() == p.read_bytes()
                   for p in (root / "two" / "shards").iterdir())
    lines = [
        f"Tiny pipeline at 64x64, {args.clips} clips of 17 frames from the 720x405 bundled clip, "
        f"{os.cpu_count()} CPU cores shared with other jobs (load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after), OMP_NUM_THREADS=1.",
        "",
        "| run | clips/s | vs loop |",
        "|---|---|---|",
        f"| straightforward loop (main-process decode, 1 clip at a time, torch.save per clip) | {loop:.2f} | 1.00x |",
        f"| two straightforward loops side by side (half the clips each; this machine's two-process "
        f"throughput at the loop's cost per clip) | {side:.2f} | {side / loop:.2f}x |",
        f"| export, in process ({args.workers} loader workers, batch {args.batch_size}, bf16 shards) | {ours:.2f} | "
        f"{ours / loop:.2f}x |",
        f"| export command, 1 process ({args.workers} workers, start-up included) | {one:.2f} | {one / loop:.2f}x |",
        f"| export command, 2 processes (torchrun, {max(1, args.workers // 2)} worker each, start-up included) | "
        f"{two:.2f} | {two / loop:.2f}x |",
        "",
        f"Shards of the 1- and 2-process exports are byte-identical: {same}.",
        "",
        "`python benchmarks/bench_export.py`",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results_md import write_section

        write_section("bench_export", "## Latent export throughput\n\n" + text)


if __name__ == "__main__":
    main()
