r"""Export a CSV's clips as VAE latents for a diffusion model (resumable, stamped, with exact
per-channel statistics).

    python scripts/encode_latents.py configs/vae/encode/video.py \
        --ckpt-path CKPT --data-path data.csv --save-dir DIR
    torchrun --nproc_per_node=N scripts/encode_latents.py configs/vae/encode/video.py ...

Writes DIR/manifest.json (stamp + stats), DIR/index.parquet and DIR/shards/*.safetensors. Run the
same command again after an interruption to finish the export; read it with
`opensora_vae.data.LatentDataset(DIR)`.
"""

import argparse
from typing import Sequence

from opensora_vae.cli import run_cli, setup_logging  # first: sets the CPU thread policy before torch loads


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="export config, e.g. configs/vae/encode/video.py")
    parser.add_argument("--ckpt-path", help="pipeline checkpoint (dir, training step dir or hub id)")
    parser.add_argument("--data-path", help="CSV (or parquet) with a 'path' column")
    parser.add_argument("--save-dir", help="export folder (new, empty, or an interrupted export to finish)")
    parser.add_argument("--num-samples", type=int, help="only the first N rows of the CSV")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. export.whole_video=True export.latent_dtype=fp32")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from opensora_vae.config import load_config
    from opensora_vae.export import run_export

    cfg = load_config(args.config, kind="encode", cfg_options=args.cfg_options,
                      cli={"ckpt_path": args.ckpt_path, "data_path": args.data_path, "save_dir": args.save_dir,
                           "num_samples": args.num_samples, "batch_size": args.batch_size})
    run_export(cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)
