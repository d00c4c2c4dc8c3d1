"""Evaluate reconstructed videos against the originals (SSIM, PSNR, LPIPS, FloLPIPS, FVD).

Same flags as the Open-Sora 1.2 reference script. Example:
  python eval/vae/eval_common_metric.py --real_video_dir samples/real \
      --generated_video_dir samples/recon --num_frames 17 --resolution 256 --crop_size 256 \
      --metric ssim psnr lpips flolpips --res_dir outputs/eval
Files are paired by name (without extension). The JSON names the two folders it compared; an
existing results file of other folders is kept unless --overwrite is given (a rerun of the same
comparison replaces it). Settings and output locations are checked before any video is read.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from opensora_vae.cli import run_cli, setup_logging  # first: sets the CPU thread policy before torch loads
from opensora_vae.metrics.evaluate import DEFAULT_EVAL_METRICS, EVAL_METRICS, evaluate_dirs, results_path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=2, help="videos per batch")
    p.add_argument("--real_video_dir", required=True)
    p.add_argument("--generated_video_dir", required=True)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--sample_fps", type=int, default=30, help="accepted for compatibility, unused")
    p.add_argument("--crop_size", type=int, default=None)
    p.add_argument("--resolution", type=int, default=336, help="short side after resizing")
    p.add_argument("--num_frames", type=int, default=100)
    p.add_argument("--sample_rate", type=int, default=1, help="frame stride")
    p.add_argument("--subset_size", type=int, default=None, help="evaluate only the first N pairs")
    p.add_argument("--metric", nargs="+", default=list(DEFAULT_EVAL_METRICS), choices=list(EVAL_METRICS),
                   help="fvd: reconstruction FVD (I3D, Kinetics-400) over all videos; needs --num_frames >= 16")
    p.add_argument("--res_dir", default=None, help="write metric_{num_frames}f_{resolution}res.json here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a results file of another comparison (the same two folders are always replaced)")
    p.add_argument("--decode_workers", type=int, default=None,
                   help="threads that decode videos and score SSIM/PSNR (default: one per core, at most 8)")
    p.add_argument("--skip_bad", action="store_true", help="skip unreadable media (listed in the JSON)")
    p.add_argument("--pwc_weights", default=None, help="PWC-Net network-default.pytorch for FloLPIPS")
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    path = results_path(args.res_dir, args.num_frames, args.resolution) if args.res_dir else None
    result = evaluate_dirs(
        args.real_video_dir, args.generated_video_dir, metrics=args.metric, num_frames=args.num_frames,
        sample_rate=args.sample_rate, resolution=args.resolution, crop_size=args.crop_size,
        device=args.device, batch_size=args.batch_size, subset_size=args.subset_size,
        skip_bad=args.skip_bad, pwc_weights=args.pwc_weights, progress=not args.no_progress,
        results_file=path, overwrite=args.overwrite, decode_workers=args.decode_workers,
    )
    print(f"{'metric':<10}{'value':>14}")
    for metric in result["protocol"]["metrics"]:
        value = result[metric]
        print(f"{metric:<10}{'n/a' if value is None else format(value, '.6f'):>14}")
    print(f"{result['num_videos']} pair(s) evaluated, {result['num_skipped']} skipped")
    if path is not None:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
