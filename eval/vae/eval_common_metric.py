"""Evaluate reconstructed videos against the originals (SSIM, PSNR, LPIPS, FloLPIPS, FVD).

Same flags as the Open-Sora 1.2 reference script, and the same defaults. Example:
  python eval/vae/eval_common_metric.py --real_video_dir samples/real \\
      --generated_video_dir samples/recon --num_frames 17 --resolution 256 --crop_size 256 \\
      --metric ssim psnr lpips flolpips --res_dir outputs/eval
Files are paired by name (without extension). `--protocol` names how the numbers are computed
(opensora: the reference's, the default; styleganv; osp: Open-Sora-Plan's); the JSON carries every
choice of it as `protocol`, with bootstrap 95% intervals (`<metric>_ci95`). Under
`torchrun --nproc_per_node=N` the pairs are split over the processes and merged exactly.
`--report` also writes a self-contained HTML page (next to the JSON, or at the path given).
The JSON names the two folders it compared; an existing results file of other folders is kept
unless --overwrite is given (a rerun of the same comparison replaces it). Settings and output
locations are checked before any video is read.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from opensora_vae.cli import run_cli, setup_logging  # first: sets the CPU thread policy before torch loads
from opensora_vae.metrics.protocol import PROTOCOL_CARDS
from opensora_vae.metrics.settings import DEFAULT_EVAL_METRICS, EVAL_METRICS, EvalSettings

D = EvalSettings  # defaults shown in --help are the dataclass's (a protocol may change them)
SUPPRESS = argparse.SUPPRESS  # a flag not given is absent: the protocol's default applies


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real_video_dir", required=True)
    p.add_argument("--generated_video_dir", required=True)
    p.add_argument("--protocol", default=SUPPRESS, choices=sorted(PROTOCOL_CARDS),
                   help=f"how the numbers are computed (default {D.protocol}); see docs/pipeline.md")
    p.add_argument("--batch_size", type=int, default=SUPPRESS, help=f"videos per batch (default {D.batch_size})")
    p.add_argument("--device", default=SUPPRESS, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--sample_fps", type=int, default=30, help="accepted for compatibility, unused")
    p.add_argument("--crop_size", type=int, default=SUPPRESS, help="centre crop after resizing (default: none)")
    p.add_argument("--resolution", type=int, default=SUPPRESS,
                   help=f"short side after resizing (default {D.resolution})")
    p.add_argument("--num_frames", type=int, default=SUPPRESS, help=f"frames per video (default {D.num_frames})")
    p.add_argument("--sample_rate", type=int, default=SUPPRESS, help="frame stride (default 1)")
    p.add_argument("--subset_size", type=int, default=SUPPRESS, help="evaluate only the first N pairs")
    p.add_argument("--metric", nargs="+", default=SUPPRESS, choices=list(EVAL_METRICS),
                   help=f"default {' '.join(DEFAULT_EVAL_METRICS)}; fvd: reconstruction FVD (I3D, Kinetics-400), "
                        "needs 16 frames per video (osp: 10)")
    p.add_argument("--res_dir", default=None, help="write metric_{num_frames}f_{resolution}res.json here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a results file of another comparison (the same two folders are always replaced)")
    p.add_argument("--decode_workers", type=int, default=SUPPRESS,
                   help="threads that decode videos and score SSIM/PSNR (default: one per core, at most 8)")
    p.add_argument("--skip_bad", action="store_true", default=SUPPRESS,
                   help="skip unreadable media (listed in the JSON)")
    p.add_argument("--pwc_weights", default=SUPPRESS, help="PWC-Net network-default.pytorch for FloLPIPS")
    p.add_argument("--bootstrap", type=int, default=SUPPRESS,
                   help=f"resamples of the videos for the 95%% intervals (default {D.bootstrap}; 0: none)")
    p.add_argument("--seed", type=int, default=SUPPRESS, help=f"of the bootstrap (default {D.seed})")
    p.add_argument("--worst_k", type=int, default=SUPPRESS, help=f"worst videos listed per metric (default {D.worst_k})")
    p.add_argument("--chunk_frames", type=int, default=SUPPRESS,
                   help=f"frames per temporal-VAE chunk, for per-position PSNR/SSIM (default {D.chunk_frames})")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="HTML",
                   help="also write a self-contained HTML report (summary, protocol card, per-video table, "
                        "per-frame curves, frames of the worst videos); default path: the results JSON's, .html")
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


def build_settings(args: argparse.Namespace, local_rank: int | None = None) -> EvalSettings:
    """The one EvalSettings of a run, from the flags given (torchrun: one GPU per process)."""
    skip = {"real_video_dir", "generated_video_dir", "sample_fps", "res_dir", "overwrite", "no_progress", "report"}
    given = {k: v for k, v in vars(args).items() if k not in skip}
    if "metric" in given:
        given["metrics"] = tuple(given.pop("metric"))
    if local_rank is not None and given.get("device", "cuda") in (None, "cuda"):
        import torch

        if torch.cuda.is_available():
            given["device"] = f"cuda:{local_rank}"
    return EvalSettings.from_cli(given)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from opensora_vae.distributed import init_distributed, launched_by_torchrun
    from opensora_vae.metrics.evaluate import evaluate_dirs, results_path

    info = init_distributed() if launched_by_torchrun() else None
    settings = build_settings(args, info.local_rank if info is not None and info.world_size > 1 else None)
    path = results_path(args.res_dir, settings.num_frames, settings.resolution) if args.res_dir else None
    report = None
    if args.report is not None:  # imported only when asked for: the eval's start-up is measured
        from opensora_vae.metrics.report_html import check_report, write_report

        report = check_report(args.report, path, args.real_video_dir, args.generated_video_dir, args.overwrite)
    result = evaluate_dirs(args.real_video_dir, args.generated_video_dir, settings,
                           progress=not args.no_progress and (info is None or info.is_main),
                           results_file=path, overwrite=args.overwrite)
    if info is not None and not info.is_main:
        return 0
    print(f"protocol {settings.protocol}")
    print(f"{'metric':<10}{'value':>14}  95% interval")
    for metric in settings.metrics:
        value, ci = result[metric], result.get(f"{metric}_ci95")
        shown = "n/a" if value is None else format(value, ".6f")
        print(f"{metric:<10}{shown:>14}  " + ("" if ci is None else f"[{ci[0]:.6f}, {ci[1]:.6f}]"))
    print(f"{result['num_videos']} pair(s) evaluated, {result['num_skipped']} skipped")
    if path is not None:
        print(f"wrote {path}")
    if report is not None:
        print(f"wrote {write_report(result, args.real_video_dir, args.generated_video_dir, settings, report)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
