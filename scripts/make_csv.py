"""Scan a folder for videos and images and write a dataset CSV.

    python scripts/make_csv.py FOLDER OUT.csv [--absolute] [--min-frames N] [--overwrite]

Prints what it wrote and every file it left out with why (unreadable, too short for
--min-frames, not a video or image); exits 0 either way. OUT is replaced only when it is a
data table (a CSV with a `path` column), and not by an empty table (no media found) unless
--overwrite: a video, notes or a folder given as OUT is an error, and is left as it was.
"""

import argparse
from typing import Sequence

from opensora_vae.cli import run_cli, setup_logging  # first: sets the CPU thread policy before torch loads


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    from opensora_vae.data.csv_tools import build_csv

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder scanned recursively for videos and images")
    parser.add_argument("out_csv", help="CSV to write (columns: path, num_frames, height, width, fps)")
    parser.add_argument("--absolute", action="store_true", help="write absolute paths instead of paths relative to the CSV")
    parser.add_argument("--min-frames", type=_at_least_one, default=None, metavar="N",
                        help="leave out videos of 2..N-1 frames: too short for a clip of N frames "
                             "(num_frames x frame_interval of the training config); 1-frame videos "
                             "and images are kept (static clips)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing table even when no media were found (an empty table)")
    args = parser.parse_args(argv)
    setup_logging()
    summary = build_csv(args.folder, args.out_csv, relative=not args.absolute, min_frames=args.min_frames,
                        overwrite=args.overwrite)
    print(summary.report())
    return 0


if __name__ == "__main__":
    run_cli(main)
