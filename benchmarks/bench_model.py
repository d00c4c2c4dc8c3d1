"""Model benchmarks on this machine (CPU): activation checkpointing and long-video memory.

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to it alone;
"peak above baseline" = peak RSS during the measured call minus RSS just before it.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_model.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_train_step(checkpointing: bool, filters: int, frames: int, size: int, repeats: int) -> dict:
    import torch

    from opensora_vae.models import TemporalVAE

    torch.manual_seed(0)
    model = TemporalVAE(filters=filters).train()
    model.set_gradient_checkpointing(checkpointing)
    x = torch.randn(1, 4, frames, size, size)

    def step():
        recon, post, _ = model(x)
        loss = (recon - x).abs().mean() + 1e-6 * post.kl().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    # Memory: the first full-size step, measured from the RSS before it (a warm-up at full size
    # would leave freed blocks in malloc's arenas and hide the activation peak).
    base = _rss_mb()
    step()
    peak = _peak_mb() - base
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    dt = (time.perf_counter() - t0) / repeats
    return {"step_s": dt, "peak_above_baseline_mb": peak}


def run_reconstruct(frames: int, chunked: bool, size: int, filters: int) -> dict:
    import torch

    from conftest_free import tiny_pipeline_for_bench

    pipe = tiny_pipeline_for_bench(filters)
    if not chunked:
        pipe.micro_frame_size = None  # the whole clip at once (reference with micro_frame_size=None)
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    io_mb = 2 * x.numel() * 4 / 2**20  # input + output tensors
    base = _rss_mb()
    t0 = time.perf_counter()
    with torch.no_grad():
        if chunked:
            out = pipe.reconstruct(x).rec
        else:
            out = pipe.decode(pipe.encode(x, sample=False), num_frames=frames)
    dt = time.perf_counter() - t0
    assert out.shape == x.shape
    peak = _peak_mb() - base
    return {"s": dt, "peak_above_baseline_mb": peak, "io_mb": io_mb, "work_mb": peak - io_mb / 2}


def _child(kind: str, kwargs: dict) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import bench_model as b; "
            f"print(json.dumps(b.{kind}(**{kwargs!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import platform

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("\n== temporal VAE train step (filters=64, 17 frames, 32x32 latents, batch 1) ==")
    res = {c: _child("run_train_step", dict(checkpointing=c, filters=64, frames=17, size=32, repeats=2))
           for c in (False, True)}
    for c, r in res.items():
        print(f"checkpointing={c!s:5}  step {r['step_s']:.2f} s  peak above baseline {r['peak_above_baseline_mb']:.0f} MB")
    print(f"memory ratio (ckpt / no ckpt): {res[True]['peak_above_baseline_mb'] / res[False]['peak_above_baseline_mb']:.2f}; "
          f"time ratio: {res[True]['step_s'] / res[False]['step_s']:.2f}")

    print("\n== encode+decode (tiny spatial VAE, temporal filters=64, 128x128) peak memory ==")
    rows = {}
    for chunked in (True, False):
        for frames in (17, 170):
            r = _child("run_reconstruct", dict(frames=frames, chunked=chunked, size=128, filters=64))
            rows[(chunked, frames)] = r
            print(f"chunked={chunked!s:5} T={frames:4d}  {r['s']:.1f} s  peak above baseline "
                  f"{r['peak_above_baseline_mb']:.0f} MB (of which output {r['io_mb'] / 2:.0f} MB)")
    for chunked in (True, False):
        a, b = rows[(chunked, 17)], rows[(chunked, 170)]
        print(f"chunked={chunked}: working-memory growth 17→170 frames (peak minus output tensor): "
              f"{b['work_mb'] / a['work_mb']:.2f}x; total peak growth {b['peak_above_baseline_mb'] / a['peak_above_baseline_mb']:.2f}x")


if __name__ == "__main__":
    main()
