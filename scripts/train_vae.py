"""Train the Open-Sora 1.2 video VAE (one stage of the three-stage recipe).

    python scripts/train_vae.py configs/vae/train/stage1.py --data-path data.csv [--outputs DIR]
    torchrun --standalone --nproc_per_node=N scripts/train_vae.py configs/vae/train/stage1.py ...

--ckpt-path: initial weights (a save_pretrained dir, e.g. the previous stage's
<outputs>/step_XXXXXXXXX/model, a step dir, or a hub id). --load DIR|auto: resume exactly from a
training checkpoint (auto = the newest complete one under --outputs, or a fresh start).
Any config key can be set with --cfg-options key=value (e.g. max_steps=1000 ema_decay=0.9999).
"""

import argparse
from typing import Sequence

from opensora_vae.cli import run_cli, setup_logging  # first: sets the CPU thread policy before torch loads


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="train config, e.g. configs/vae/train/stage1.py")
    parser.add_argument("--data-path", help="CSV (or parquet) with a 'path' column")
    parser.add_argument("--outputs", help="run folder: checkpoints, tensorboard/, train.log")
    parser.add_argument("--ckpt-path", help="initial pipeline weights (not a resume)")
    parser.add_argument("--load", help="resume from a step_XXXXXXXXX dir, or 'auto'")
    parser.add_argument("--batch-size", type=int, help="per-process batch size")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. max_steps=100 dataset.num_frames=33")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from opensora_vae.config import load_config
    from opensora_vae.training import train

    cfg = load_config(args.config, kind="train", cfg_options=args.cfg_options, cli={
        "data_path": args.data_path, "outputs": args.outputs, "ckpt_path": args.ckpt_path,
        "load": args.load, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed})
    train(cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)
