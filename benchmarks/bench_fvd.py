"""Time the I3D features of FVD: seconds per clip (16 frames at 224x224), CPU or CUDA.

    python benchmarks/bench_fvd.py [--device cpu] [--batch-sizes 1 4] [--repeats 2]

CPU: process time per clip (all threads; what the clip costs the machine) and wall time per clip,
with the loaded model's channels-last layout (what `i3d_features` uses) and with the default
layout, side by side. CUDA: clips/s and peak memory per batch size, TF32 off (as
`i3d_features` runs) and on, with the largest logit difference TF32 makes. Needs the converted
weights (`python tools/install_weights.py`); with `--random` a randomly initialised network
(timing only).
"""

from __future__ import annotations

import argparse
import time

import torch

from opensora_vae.metrics.fvd import i3d_features, i3d_inputs, load_i3d
from opensora_vae.metrics.i3d import InceptionI3d


def _model(random: bool, device: torch.device) -> InceptionI3d:
    if random:
        return InceptionI3d().to(memory_format=torch.channels_last_3d).eval().requires_grad_(False).to(device)
    return load_i3d().to(device)


def _time(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    fn()  # warm-up (oneDNN / cuDNN pick their kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--random", action="store_true", help="random weights (timing only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = _model(args.random, device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    g = torch.Generator().manual_seed(0)
    if device.type == "cpu":
        plain = _model(args.random, device).to(memory_format=torch.contiguous_format)
        print("| batch | layout | process s/clip | wall s/clip |\n|---|---|---|---|")
        for b in args.batch_sizes:
            x = (torch.rand(b, 3, 16, 224, 224, generator=g) * 2 - 1)
            for name, net, inp in [("channels-last (used)", model, x.contiguous(memory_format=torch.channels_last_3d)),
                                   ("contiguous", plain, x)]:
                with torch.no_grad():
                    wall, cpu = _time(lambda: net(inp), args.repeats, device)
                print(f"| {b} | {name} | {cpu / b:.2f} | {wall / b:.2f} |")
        return
    videos = torch.rand(max(args.batch_sizes), 16, 3, 256, 256, generator=g)
    print("| batch | TF32 | clips/s | peak GiB |\n|---|---|---|---|")
    for b in args.batch_sizes:
        clips = videos[:b].to(device)
        for tf32 in (False, True):
            torch.cuda.reset_peak_memory_stats(device)
            if tf32:
                with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
                    x = i3d_inputs(clips).contiguous(memory_format=torch.channels_last_3d)
                    wall, _ = _time(lambda: model(x), args.repeats, device)
                    diff = (model(x) - i3d_features(model, clips, batch_size=b).to(device)).abs().max().item()
            else:
                wall, _ = _time(lambda: i3d_features(model, clips, batch_size=b), args.repeats, device)
                diff = 0.0
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            print(f"| {b} | {'on' if tf32 else 'off (used)'} | {b / wall:.1f} | {peak:.2f} |"
                  + (f" max logit change {diff:.2e}" if tf32 else ""))


if __name__ == "__main__":
    main()
