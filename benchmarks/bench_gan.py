"""The adversarial phase's cost: one training step (the trainer's `train_step`) of the tiny stage-3
config with and without the discriminator (configs/vae/train/tiny/stage3_gan.py), on this CPU.

Each case runs in a fresh process: one warm-up step, then the median of `--steps` timed steps;
peak = peak RSS (VmHWM, reset after the warm-up) minus the RSS before the timed steps. With the
discriminator, the adaptive-weight call (two gradients at the decoder's last layer, the step where
Open-Sora-Plan users report out-of-memory) is measured on its own as well: its peak above the RSS
just before it, against the whole step's.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_gan.py            # rewrites its RESULTS.md section
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_gan.py --steps 2 --size 32 --frames 17
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

from memory import hwm_mb, reset_peak, rss_mb  # benchmarks/memory.py

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "assets" / "media" / "city_cc0_256_17f.mp4"


def run_case(with_discriminator: bool, steps: int, size: int, frames: int, workdir: str) -> dict:
    """Runs in a child process: builds the trainer and times `train_step` on one fixed clip."""
    import torch

    from opensora_vae.config import load_config
    from opensora_vae.training import Trainer, adversarial

    csv = Path(workdir) / "data.csv"
    csv.write_text(f"path\n{CLIP}\n")
    options = {"dataset.image_size": [size, size], "dataset.num_frames": frames, "mixed_strategy": None,
               "perceptual_random_backbone": True, "num_workers": 0}
    if not with_discriminator:
        options["discriminator"] = None
    outputs = Path(workdir) / ("gan" if with_discriminator else "plain")
    cfg = load_config(REPO / "configs/vae/train/tiny/stage3_gan.py", cfg_options=options,
                      cli={"data_path": str(csv), "outputs": str(outputs)})
    trainer = Trainer(cfg)
    adaptive = {"peak_mb": 0.0, "s": []}
    original = adversarial.adaptive_weight

    def measured_adaptive_weight(*args):
        # Its own peak above the RSS just before it; the step's VmHWM mark is restored by taking
        # the max afterwards (the reset would otherwise hide the step's earlier peak).
        step_peak = hwm_mb()
        base = reset_peak()
        t = time.perf_counter()
        out = original(*args)
        adaptive["s"].append(time.perf_counter() - t)
        adaptive["peak_mb"] = max(adaptive["peak_mb"], hwm_mb() - base)
        measured_adaptive_weight.step_peak = max(step_peak, hwm_mb())
        return out

    measured_adaptive_weight.step_peak = 0.0
    adversarial.adaptive_weight = measured_adaptive_weight
    torch.manual_seed(0)
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    try:
        trainer.train_step(video, 1)  # warm-up
        adaptive["s"].clear()
        base = reset_peak()
        times = []
        for step in range(2, steps + 2):
            t = time.perf_counter()
            out = trainer.train_step(video, step)
            times.append(time.perf_counter() - t)
            assert not out.skipped_step
        peak = max(hwm_mb(), measured_adaptive_weight.step_peak) - base
    finally:
        adversarial.adaptive_weight = original
        trainer.close()
    times.sort()
    row = {"step_s": times[len(times) // 2], "peak_above_baseline_mb": peak,
           "vae_params_m": sum(p.numel() for p in trainer.pipe.parameters()) / 1e6}
    if with_discriminator:
        row.update(adaptive_s=sorted(adaptive["s"])[len(adaptive["s"]) // 2], adaptive_peak_mb=adaptive["peak_mb"],
                   d_params_m=sum(p.numel() for p in trainer.adversarial.discriminator.parameters()) / 1e6,
                   d_loss=out.adversarial["gan/d_loss"])
    return row


def _child(kwargs: dict) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_gan as b; "
            f"print(json.dumps(b.run_case(**{kwargs!r})))")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark case {kwargs} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _machine() -> str:
    import platform

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}, load average before the run {os.getloadavg()[0]:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    machine = _machine()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {gan: _child(dict(with_discriminator=gan, steps=args.steps, size=args.size, frames=args.frames,
                                 workdir=tmp)) for gan in (False, True)}
    plain, gan = rows[False], rows[True]
    text = f"""## Adversarial phase: step time and memory with vs without the discriminator (CPU)

Machine: {machine}; measured {time.strftime('%Y-%m-%d')}.

`OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_gan.py --steps {args.steps} --size {args.size} --frames {args.frames}` — the trainer's
`train_step` on the tiny stage-3 config (`configs/vae/train/tiny/stage3_gan.py`: {plain['vae_params_m']:.2f} M VAE
parameters, random LPIPS backbone; discriminator filters 32, multipliers (1, 1, 1): {gan['d_params_m']:.2f} M) on one fixed
{args.frames}×{args.size}² clip, fp32; each case in a fresh process, median of {args.steps} steps after a warm-up step; peak = peak
RSS (VmHWM, reset after the warm-up) minus the RSS before the timed steps.

| | step time | peak above baseline |
|---|---|---|
| stage 3 (no discriminator) | {plain['step_s'] * 1e3:.0f} ms | {plain['peak_above_baseline_mb']:.0f} MB |
| stage 3 + discriminator | {gan['step_s'] * 1e3:.0f} ms ({gan['step_s'] / plain['step_s']:.2f}×) | {gan['peak_above_baseline_mb']:.0f} MB |
| of which the adaptive weight (2 gradients at the last layer) | {gan['adaptive_s'] * 1e3:.0f} ms | {gan['adaptive_peak_mb']:.0f} MB above the RSS before it |

The adaptive weight takes its two gradients one after the other, with respect to the last layer
only (autograd then runs just the spatial decoder, LPIPS and D parts of the graph, not the temporal
VAE, and no weight gradients), and keeps only their norms, so its extra memory is one partial
backward's transient gradients: {gan['adaptive_peak_mb']:.0f} MB above the RSS just before it (RSS of large
tensors returns to the OS when they are freed, so the three peaks have different baselines). Its time
is {gan['adaptive_s'] / gan['step_s'] * 100:.0f}% of the adversarial step: the training backward runs those parts again.
"""
    print(text)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from results_md import write_section

        write_section("bench_gan", text)
        print("wrote benchmarks/RESULTS.md (section bench_gan)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
