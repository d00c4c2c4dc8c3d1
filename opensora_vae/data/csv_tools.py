"""Build a dataset CSV by scanning a folder for videos and images."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from .video_io import MediaReadError, VideoFile, image_size, is_image, is_video
from ..errors import OutputExistsError, UserError, check_folder_location
from ..files import atomic_write

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["path", "num_frames", "height", "width", "fps"]


class CsvBuildError(UserError, ValueError):
    """`build_csv` cannot start: the folder is missing or an option is out of range."""


@dataclass
class CsvSummary:
    """What `build_csv` wrote (counts of the CSV's rows) and every file it found but left out."""

    out_csv: str
    num_videos: int = 0
    num_images: int = 0
    min_frames: int | None = None
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    too_short: list[tuple[str, int]] = field(default_factory=list)  # (path, num_frames)
    ignored: list[str] = field(default_factory=list)  # neither a video nor an image (by extension)

    @property
    def left_out(self) -> list[tuple[str, str]]:
        """(path, why) for every file found under the folder that is not in the CSV."""
        return [*self.unreadable,
                *((p, f"too short ({n} < {self.min_frames} frames)") for p, n in self.too_short),
                *((p, "not a video or image extension") for p in self.ignored)]

    def __str__(self) -> str:
        short = f", {len(self.too_short)} too short (< {self.min_frames} frames)" if self.min_frames else ""
        return (f"{self.out_csv}: {self.num_videos} videos, {self.num_images} images, "
                f"{len(self.unreadable)} unreadable{short}, {len(self.ignored)} other files left out")

    def report(self) -> str:
        """The summary line, then each file left out with why (other files by extension only)."""
        lines = [str(self)]
        lines += [f"  unreadable: {p}: {why}" for p, why in self.unreadable]
        lines += [f"  too short: {p}: {n} frames" for p, n in self.too_short]
        kinds = Counter(os.path.splitext(p)[1].lower() or "(no extension)" for p in self.ignored)
        if kinds:
            lines.append("  other files: " + ", ".join(f"{ext} {n}" for ext, n in sorted(kinds.items())))
            lines += [f"    {p}" for p in self.ignored]
        return "\n".join(lines)


def _walk(folder: str | os.PathLike) -> list[str]:
    """Every file under ``folder`` (recursive, following no symlinked dirs), sorted by path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in files)
    return sorted(found)


def _table_rows(path: str) -> int | None:
    """Rows of the data table at ``path`` (a CSV whose header has a ``path`` column), or None
    when the file is something else (a video, notes, a binary): then it is not ours to replace."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if "path" not in header:
                return None
            return sum(1 for _ in reader)
    except (UnicodeDecodeError, csv.Error, OSError):
        return None


def check_out_csv(out_csv: str | os.PathLike) -> int | None:
    """Before any scan: ``out_csv`` can be written as a table. Returns the row count of the table
    already there (None if there is none). Refused: a folder, a path under a file or an unwritable
    folder, and an existing file that is not a data table (it is never overwritten)."""
    out_csv = str(out_csv)
    if os.path.isdir(out_csv):
        raise CsvBuildError(f"OUT {out_csv} is a folder; pass the CSV file to write, e.g. "
                            f"{os.path.join(out_csv, 'data.csv')}")
    check_folder_location(os.path.dirname(os.path.abspath(out_csv)), "cannot write the CSV under",
                          CsvBuildError)
    if not os.path.lexists(out_csv):
        return None
    if not os.path.isfile(out_csv):
        raise CsvBuildError(f"OUT {out_csv} exists and is not a regular file; pass a CSV path")
    rows = _table_rows(out_csv)
    if rows is None:
        raise OutputExistsError(f"OUT {out_csv} exists and is not a data table (no 'path' column in a CSV "
                                f"header); it is never overwritten: pass another OUT path")
    return rows


def build_csv(
    folder: str | os.PathLike, out_csv: str | os.PathLike, relative: bool = True,
    min_frames: int | None = None, overwrite: bool = False,
) -> CsvSummary:
    """Write ``out_csv`` with columns path, num_frames, height, width, fps (images: 1 frame,
    fps empty). Paths are relative to the CSV's folder unless ``relative=False``.

    Left out, counted and listed in the summary: files that cannot be opened, videos of 2 to
    ``min_frames - 1`` frames (``min_frames``: the clip length a training run reads, e.g.
    ``num_frames * frame_interval``; 1-frame videos and images are kept: they are static
    clips), and files that are neither videos nor images. Video frame counts come from the
    container (a truncated file is only caught when its frames are decoded).

    ``out_csv`` (`check_out_csv`, before the scan): an existing file that is not a data table is
    never replaced; an existing table is replaced by the new one, but not by an empty one (no
    media found) unless ``overwrite``. The file is written whole or not at all."""
    folder, out_csv = str(folder), str(out_csv)
    if not os.path.isdir(folder):
        raise CsvBuildError(f"{folder}: not a folder")
    if min_frames is not None and min_frames < 1:
        raise CsvBuildError(f"min_frames must be >= 1, got {min_frames}")
    existing_rows = check_out_csv(out_csv)
    csv_dir = os.path.dirname(os.path.abspath(out_csv))
    summary = CsvSummary(out_csv, min_frames=min_frames)
    rows = []
    for path in _walk(folder):
        if not (is_video(path) or is_image(path)):
            summary.ignored.append(path)
            continue
        try:
            if is_image(path):
                height, width = image_size(path)
                num_frames, fps = 1, math.nan
            else:
                with VideoFile(path) as video:
                    info = video.info
                num_frames, fps, height, width = info.num_frames, info.fps, info.height, info.width
        except MediaReadError as exc:
            summary.unreadable.append((path, exc.reason))
            logger.warning("unreadable, left out: %s: %s", path, exc.reason)
            continue
        if min_frames is not None and 1 < num_frames < min_frames:
            summary.too_short.append((path, num_frames))
            continue
        if is_image(path):
            summary.num_images += 1
        else:
            summary.num_videos += 1
        abs_path = os.path.abspath(path)
        shown = os.path.relpath(abs_path, csv_dir) if relative else abs_path
        rows.append((shown, num_frames, height, width, fps))
    if not rows and existing_rows and not overwrite:
        raise OutputExistsError(
            f"no usable media under {folder} ({summary}); not replacing the {existing_rows}-row table "
            f"{out_csv} with an empty one: pass --overwrite to do it anyway")
    os.makedirs(csv_dir, exist_ok=True)
    # disk full, interrupted: the old table stays, no half table is left
    atomic_write(out_csv, lambda tmp: pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(tmp, index=False))
    return summary
