r"""Reconstruct a CSV's videos/images with a VAE pipeline checkpoint.

    python scripts/inference_vae.py configs/vae/inference/video.py \
        --ckpt-path CKPT --data-path data.csv --save-dir samples/run1 [--num-samples N]
    torchrun --standalone --nproc_per_node=N scripts/inference_vae.py ...   (samples sharded)

CKPT: a save_pretrained dir, a training step dir (<outputs>/step_XXXXXXXXX), the released
checkpoint dir, or a hub id (hpcai-tech/OpenSora-VAE-v1.2). Writes <save-dir>_ori/, _rec/,
_spatial/ (NNN.mp4, or NNN.png for 1-frame samples; --cfg-options output_names=stem names them
after the source files) and <save-dir>_metrics.json (the eval's keys, plus `sources`: name -> path).
"""

import argparse
from typing import Sequence

from opensora_vae.cli import run_cli, setup_logging  # first: sets the CPU thread policy before torch loads


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="inference config, e.g. configs/vae/inference/video.py")
    parser.add_argument("--ckpt-path", help="pipeline checkpoint (dir, training step dir or hub id)")
    parser.add_argument("--data-path", help="CSV (or parquet) with a 'path' column")
    parser.add_argument("--save-dir", help="output prefix: writes <save-dir>_ori, _rec, _spatial")
    parser.add_argument("--num-samples", type=int, help="only the first N rows of the CSV")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. lossless=True dataset.num_frames=33")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from opensora_vae.config import load_config
    from opensora_vae.inference import run_inference

    cfg = load_config(args.config, kind="inference", cfg_options=args.cfg_options,
                      cli={"ckpt_path": args.ckpt_path, "data_path": args.data_path,
                           "save_dir": args.save_dir, "num_samples": args.num_samples,
                           "batch_size": args.batch_size, "seed": args.seed})
    run_inference(cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)
