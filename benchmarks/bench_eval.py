"""Time our eval runner against a baseline that works like the reference eval script.

    python benchmarks/bench_eval.py [--videos 8] [--metrics ssim psnr lpips] [--device cpu]

Builds ``--videos`` pairs from the bundled 17-frame 256x256 clip in a temporary folder: the
real video is a lossless copy, the generated one a degraded version (noise, blur, quantisation,
shift, ... cycling), both lossless. Then evaluates 17 frames at resolution 256 with

- baseline (what the reference ``eval_common_metric.py`` does): each metric is a separate pass
  that decodes every video again; SSIM filters each frame and channel with the 2-D 11x11
  float64 Gaussian window (scipy.ndimage.correlate here, cv2.filter2D there), PSNR in numpy,
  LPIPS with batch 1; FloLPIPS per video (the reference needs cupy: here our PWC-Net);
- ours: ``evaluate_dirs`` (one decode per video, separable SSIM, batched LPIPS / FloLPIPS).

Prints both times, the ratio, and the largest per-video difference of every metric.
FloLPIPS uses random PWC weights when ``network-default.pytorch`` is absent (timing only).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch
from scipy import ndimage

from opensora_vae.data.video_io import VideoFile, read_video_frames, write_video
from opensora_vae.lpips import build_lpips, find_backbone
from opensora_vae.metrics import FloLPIPS, LPIPSMetric, MetricSuite, build_pwcnet, evaluate_dirs, preprocess
from opensora_vae.metrics.ssim import C1, C2, gaussian_window_1d

CLIP = "assets/media/city_cc0_256_17f.mp4"


def _degrade(frames: np.ndarray, kind: int, rng: np.random.Generator) -> np.ndarray:
    x = frames.astype(np.float64)
    if kind == 0:
        x = x + rng.normal(0, 6, x.shape)
    elif kind == 1:
        x = ndimage.gaussian_filter(x, sigma=(0, 1.0, 1.0, 0))
    elif kind == 2:
        x = np.round(x / 24) * 24
    elif kind == 3:
        x = np.roll(x, (1, 2), axis=(1, 2))
    else:
        x = ndimage.gaussian_filter(x, sigma=(0, 0.6, 0.6, 0)) + rng.normal(0, 3, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def build_folders(root: str, count: int) -> tuple[str, str]:
    frames = read_video_frames(CLIP, range(17))
    real, gen = os.path.join(root, "real"), os.path.join(root, "gen")
    os.makedirs(real), os.makedirs(gen)
    rng = np.random.default_rng(0)
    for i in range(count):
        write_video(os.path.join(real, f"v{i:02d}.mkv"), frames, 24, lossless=True)
        write_video(os.path.join(gen, f"v{i:02d}.mkv"), _degrade(frames, i % 5, rng), 24, lossless=True)
    return real, gen


# ----------------------------------------------------------------------------- baseline


def _baseline_load(path: str, num_frames: int, resolution: int, device: torch.device) -> torch.Tensor:
    video = VideoFile(path)  # a fresh decode for every metric, as the reference's DataLoader did
    indices = np.linspace(0, num_frames - 1, num_frames, dtype=int)
    return preprocess(video.read(indices), resolution, resolution, device)


def _baseline_ssim_frame(x: np.ndarray, y: np.ndarray) -> float:
    g = gaussian_window_1d()
    window = np.outer(g, g)

    def filt(img):
        return ndimage.correlate(img, window)[5:-5, 5:-5]

    values = []
    for c in range(3):
        a, b = x[c].astype(np.float64), y[c].astype(np.float64)
        mu1, mu2 = filt(a), filt(b)
        s1, s2, s12 = filt(a * a) - mu1**2, filt(b * b) - mu2**2, filt(a * b) - mu1 * mu2
        smap = ((2 * mu1 * mu2 + C1) * (2 * s12 + C2)) / ((mu1**2 + mu2**2 + C1) * (s1 + s2 + C2))
        values.append(smap.mean())
    return float(np.mean(values))


def _baseline_psnr_frame(x: np.ndarray, y: np.ndarray) -> float:
    mse = np.mean((x - y) ** 2)
    return 100.0 if mse < 1e-10 else 20 * math.log10(1 / math.sqrt(mse))


def baseline(real_dir: str, gen_dir: str, metrics: list[str], suite: MetricSuite, num_frames: int,
             resolution: int) -> dict[str, dict[str, float]]:
    names = sorted(os.listdir(real_dir))
    device = suite.device
    per_video: dict[str, dict[str, float]] = {n: {} for n in names}
    for metric in metrics:
        for name in names:
            real = _baseline_load(os.path.join(real_dir, name), num_frames, resolution, device)
            fake = _baseline_load(os.path.join(gen_dir, name), num_frames, resolution, device)
            if metric == "ssim":
                vals = [_baseline_ssim_frame(r, f) for r, f in zip(real.cpu().numpy(), fake.cpu().numpy())]
            elif metric == "psnr":
                vals = [_baseline_psnr_frame(r, f) for r, f in zip(real.cpu().numpy(), fake.cpu().numpy())]
            elif metric == "lpips":
                with torch.no_grad():
                    vals = [suite.lpips.model(r[None] * 2 - 1, f[None] * 2 - 1).mean().item()
                            for r, f in zip(real, fake)]
            else:
                vals = suite.flolpips.video(real, fake, batch_size=num_frames).tolist()
            per_video[name][metric] = float(np.mean(vals))
    return per_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--metrics", nargs="+", default=["ssim", "psnr", "lpips"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=2)
    args = parser.parse_args()
    num_frames, resolution = 17, 256
    random_ok = find_backbone("alex") is None
    if random_ok:
        print("note: AlexNet backbone absent, LPIPS uses a random backbone (timing only)")
    torch.manual_seed(0)
    flolpips = None
    if "flolpips" in args.metrics:
        flolpips = FloLPIPS(build_lpips("alex", allow_random_backbone=random_ok), build_pwcnet(allow_random=True))
    suite = MetricSuite(args.metrics, args.device, lpips_metric=LPIPSMetric(allow_random_backbone=random_ok),
                        flolpips=flolpips)
    with tempfile.TemporaryDirectory() as tmp:
        real_dir, gen_dir = build_folders(tmp, args.videos)
        start = time.perf_counter()
        ref = baseline(real_dir, gen_dir, suite.metrics, suite, num_frames, resolution)
        t_base = time.perf_counter() - start
        start = time.perf_counter()
        ours = evaluate_dirs(real_dir, gen_dir, num_frames=num_frames, resolution=resolution,
                             crop_size=resolution, batch_size=args.batch_size, suite=suite, progress=False)
        t_ours = time.perf_counter() - start
    print(f"{args.videos} videos x {num_frames} frames at {resolution}x{resolution}, device {suite.device}, "
          f"torch threads {torch.get_num_threads()}, metrics {suite.metrics}")
    print(f"baseline (reference-style): {t_base:8.2f} s")
    print(f"ours (evaluate_dirs):       {t_ours:8.2f} s")
    print(f"speed-up:                   {t_base / t_ours:8.2f} x")
    for metric in suite.metrics:
        diff = max(abs(ours["per_video"][n.split('.')[0]][metric] - ref[n][metric]) for n in ref)
        print(f"  {metric:<9} ours {ours[metric]:.6f}  max |ours - baseline| per video {diff:.2e}")


if __name__ == "__main__":
    main()
