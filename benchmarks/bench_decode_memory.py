"""Peak memory of reading one training sample (17 frames -> 256x256, "center") from generated
1080p and 4K videos, side by side in one run (part ``decode``):

- full read: every frame at full resolution, then the transform on the whole clip (what
  `VideoDataset.load` did before `VideoTransform.from_video`; `frames_to_clip` now divides in
  place, so this path is already one float32 copy of the clip lighter than it was);
- from_video: each frame reduced to 256x256 as soon as it is decoded (what it does now).

Part ``metrics``: peak memory of inference's per-sample PSNR/SSIM (`inference.report.frame_metrics`)
as the clip grows, frame by frame (now) against the whole clip in float64 (before).

    python benchmarks/bench_decode_memory.py [--part decode|metrics|all] [--no-write]

The sources are made with PyAV in a temporary folder (H.264 ultrafast, a smooth moving pattern:
small files whatever the frame size). Every read runs in a fresh subprocess with the video
already opened; its peak = the peak RSS during the read (VmHWM, reset just before it) minus the
RSS before it. The table is written into benchmarks/RESULTS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's opensora_vae
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (memory.py), also when loaded as a module
from memory import hwm_mb, reset_peak, rss_mb  # noqa: E402

SOURCES = {"1080p": (1920, 1080), "4K": (3840, 2160)}
METHODS = {"full": "full read, then transform (before)", "from_video": "`VideoTransform.from_video` (now)"}
SAMPLE = dict(start=4, num_frames=17, size=256)  # frames 4..20: a seek, as a random window makes
SECTION = "bench_decode_memory"
METRICS_SECTION = "bench_inference_metrics_memory"
# (height, width) -> clip lengths: 2x and 4x the frames must not raise the peak (issue 19 item 8).
METRIC_CLIPS = {(256, 256): (17, 34, 68), (1080, 1920): (1, 2, 4)}
METRIC_METHODS = {"whole_clip": "whole clip in float64 (before)", "per_frame": "`frame_metrics`, frame by frame (now)"}


def make_source(path: Path, width: int, height: int, num_frames: int = 24) -> Path:
    """A smooth pattern moving across the frame, encoded one frame at a time (H.264 ultrafast,
    keyframe interval 12, yuv420p)."""
    y = np.linspace(0, 6 * np.pi, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 10 * np.pi, width, dtype=np.float32)[None, :]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"preset": "ultrafast", "crf": "28"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 12
        for i in range(num_frames):
            shift = 0.2 * i
            rgb = np.empty((height, width, 3), dtype=np.uint8)
            rgb[..., 0] = 128 + 100 * np.sin(x + shift) * np.cos(y)
            rgb[..., 1] = 128 + 100 * np.cos(x - y + shift)
            rgb[..., 2] = 128 + 100 * np.sin(y + shift)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def measure(path: str, method: str, start: int, num_frames: int, size: int) -> dict:
    """In this process: read the sample with `method`; peak RSS above the RSS before the read."""
    from opensora_vae.data.transforms import VideoTransform, frames_to_clip
    from opensora_vae.data.video_io import VideoFile

    transform = VideoTransform("center", size)
    indices = list(range(start, start + num_frames))
    video = VideoFile(path)
    base = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    if method == "from_video":
        clip = transform.from_video(video, indices)
    else:
        clip = transform(frames_to_clip(video.read(indices)))
    seconds = time.perf_counter() - t0
    return {"peak_mb": hwm_mb() - base, "seconds": seconds, "shape": list(clip.shape),
            "sha256": hashlib.sha256(clip.numpy().tobytes()).hexdigest()}


def whole_clip_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, list[float]]:
    """`frame_metrics` before issue 19 item 8 (commit e7f2af7): the whole clip as float64."""
    import torch

    from opensora_vae.metrics import psnr, ssim

    def as_unit(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float64) / 255.0

    a, b = as_unit(real), as_unit(fake)
    return {"psnr": psnr(a, b).tolist(), "ssim": ssim(a, b).tolist()}


def measure_metrics(method: str, num_frames: int, height: int, width: int) -> dict:
    """In this process: PSNR/SSIM of a random uint8 clip pair with `method`; peak RSS above the
    RSS with the two clips in memory (the uint8 frames inference writes anyway)."""
    from opensora_vae.inference.report import frame_metrics

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    fake = (real ^ rng.integers(0, 8, real.shape, dtype=np.uint8)).astype(np.uint8)
    fn = frame_metrics if method == "per_frame" else whole_clip_metrics
    fn(real[:1], fake[:1])  # warm-up: imports, BLAS buffers
    base = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    values = fn(real, fake)
    seconds = time.perf_counter() - t0
    return {"peak_mb": hwm_mb() - base, "seconds": seconds,
            "sha256": hashlib.sha256(json.dumps(values).encode()).hexdigest()}


def run_child(path: Path | None, method: str, **sample) -> dict:
    """`measure` (or `measure_metrics` without a path) in a fresh interpreter, so that no earlier
    run's memory hides this one's peak."""
    args = json.dumps({"path": str(path), "method": method, **{**SAMPLE, **sample}} if path is not None
                      else {"method": method, **sample})
    out = subprocess.run([sys.executable, __file__, "--child", args], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def metrics_table() -> str:
    rows = {}
    for (height, width), lengths in METRIC_CLIPS.items():
        for num_frames in lengths:
            for method in METRIC_METHODS:
                rows[height, num_frames, method] = r = run_child(None, method, num_frames=num_frames,
                                                                 height=height, width=width)
                print(f"{width}x{height} {num_frames:3} frames {method:10} peak {r['peak_mb']:7.1f} MB  "
                      f"{r['seconds']:.2f} s", flush=True)
            assert rows[height, num_frames, "per_frame"]["sha256"] == rows[height, num_frames, "whole_clip"]["sha256"], \
                f"{width}x{height}, {num_frames} frames: the values differ"
    lines = [
        "## Inference: peak memory of the per-sample PSNR/SSIM as the clip grows",
        "",
        "`python benchmarks/bench_decode_memory.py --part metrics` — `inference.report.frame_metrics` on a "
        "random uint8 clip pair; each in a fresh process; peak = peak RSS during the metric step minus RSS "
        "before it (the uint8 clips, which inference holds anyway, are in the baseline). "
        f"Measured {time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} on {platform.machine()}, "
        f"{os.cpu_count()} cores.",
        "",
        "| frame size | frames | " + " | ".join(f"{METRIC_METHODS[m]}: peak, time" for m in METRIC_METHODS) + " |",
        "|---|---|" + "---|" * len(METRIC_METHODS),
    ]
    for (height, width), lengths in METRIC_CLIPS.items():
        for num_frames in lengths:
            lines.append(f"| {width}×{height} | {num_frames} | " + " | ".join(
                f"{rows[height, num_frames, m]['peak_mb']:.1f} MB, {rows[height, num_frames, m]['seconds']:.2f} s"
                for m in METRIC_METHODS) + " |")
    lines += ["", "Both give the same values (same sha256 of the per-frame lists). Frame by frame the peak is "
              "one float64 frame pair and the SSIM buffers of one plane, flat in the clip length; the whole "
              "clip's grows with every frame."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print the table only, leave RESULTS.md")
    parser.add_argument("--part", choices=["decode", "metrics", "all"], default="all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = json.loads(args.child)
        print(json.dumps(measure(**child) if "path" in child else measure_metrics(**child)))
        return
    if args.part in ("metrics", "all"):
        table = metrics_table()
        print("\n" + table)
        if not args.no_write:
            from results_md import write_section  # benchmarks/ is on sys.path: this script's folder

            write_section(METRICS_SECTION, table)
    if args.part == "metrics":
        return
    rows, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, height) in SOURCES.items():
            path = make_source(Path(tmp) / f"{name}.mp4", width, height)
            sizes[name] = os.path.getsize(path) / 1e6
            for method in METHODS:
                rows[name, method] = run_child(path, method)
                print(f"{name:6} {method:10} peak {rows[name, method]['peak_mb']:7.0f} MB  "
                      f"{rows[name, method]['seconds']:.2f} s", flush=True)
    for name in SOURCES:
        assert rows[name, "full"]["sha256"] == rows[name, "from_video"]["sha256"], f"{name}: clips differ"
    lines = [
        "## Data: peak memory of one sample from 1080p and 4K videos",
        "",
        f"`python benchmarks/bench_decode_memory.py` — one sample of {SAMPLE['num_frames']} frames "
        f"(frames {SAMPLE['start']}..{SAMPLE['start'] + SAMPLE['num_frames'] - 1}, centre crop, "
        f"{SAMPLE['size']}×{SAMPLE['size']}) from generated H.264 videos "
        + ", ".join(f"{n} ({SOURCES[n][0]}×{SOURCES[n][1]}, {sizes[n]:.1f} MB)" for n in SOURCES)
        + "; each read in a fresh process; peak = peak RSS during the read minus RSS before it. "
        f"Measured {time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} on {platform.machine()}, "
        f"{os.cpu_count()} cores.",
        "",
        "| source | " + " | ".join(f"{METHODS[m]}: peak, time" for m in METHODS) + " | peak ratio |",
        "|---|" + "---|" * (len(METHODS) + 1),
    ]
    for name in SOURCES:
        full, new = rows[name, "full"], rows[name, "from_video"]
        lines.append(f"| {name} | " + " | ".join(f"{rows[name, m]['peak_mb']:.0f} MB, {rows[name, m]['seconds']:.2f} s"
                                                  for m in METHODS)
                     + f" | **{new['peak_mb'] / full['peak_mb']:.3f}×** |")
    growth = {m: rows["4K", m]["peak_mb"] / rows["1080p", m]["peak_mb"] for m in METHODS}
    lines += [
        "",
        f"Both methods give identical clips (same sha256 per source). From 1080p to 4K (4× the pixels) "
        f"the full read's peak grows {growth['full']:.1f}×; from_video's grows {growth['from_video']:.1f}× and "
        "stays at one source frame (RGB, plus one colour plane as float32) and the decoder's reference "
        "frames, whatever the clip length.",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_write:
        from results_md import RESULTS, write_section  # benchmarks/ is on sys.path: this script's folder

        write_section(SECTION, table)
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
