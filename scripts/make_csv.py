"""Scan a folder for videos and images and write a dataset CSV.

    python scripts/make_csv.py FOLDER OUT.csv [--absolute]
"""

import argparse
from typing import Sequence

from opensora_vae.cli import run_cli, setup_logging  # first: sets the CPU thread policy before torch loads


def main(argv: Sequence[str] | None = None) -> int:
    from opensora_vae.data.csv_tools import build_csv

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder scanned recursively for videos and images")
    parser.add_argument("out_csv", help="CSV to write (columns: path, num_frames, height, width, fps)")
    parser.add_argument("--absolute", action="store_true", help="write absolute paths instead of paths relative to the CSV")
    args = parser.parse_args(argv)
    setup_logging()
    summary = build_csv(args.folder, args.out_csv, relative=not args.absolute)
    print(summary)
    for path, reason in summary.unreadable:
        print(f"  unreadable: {path}: {reason}")
    return 0


if __name__ == "__main__":
    run_cli(main)
