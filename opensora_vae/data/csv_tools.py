"""Build a dataset CSV by scanning a folder for videos and images."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import pandas as pd

from .video_io import MediaReadError, VideoFile, image_size, is_image, is_video

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["path", "num_frames", "height", "width", "fps"]


@dataclass
class CsvSummary:
    out_csv: str
    num_videos: int = 0
    num_images: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __str__(self) -> str:
        return (
            f"{self.out_csv}: {self.num_videos} videos, {self.num_images} images, "
            f"{len(self.unreadable)} unreadable files left out"
        )


def find_media(folder: str | os.PathLike) -> list[str]:
    """All video and image files under ``folder`` (recursive, following no symlinked dirs),
    sorted by path so the CSV is reproducible."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in files if is_video(f) or is_image(f))
    return sorted(found)


def build_csv(
    folder: str | os.PathLike, out_csv: str | os.PathLike, relative: bool = True
) -> CsvSummary:
    """Write ``out_csv`` with columns path, num_frames, height, width, fps (images: 1 frame,
    fps empty). Paths are relative to the CSV's folder unless ``relative=False``. Files that
    cannot be opened are left out, counted and logged; video frame counts come from the
    container index (a truncated file is only caught when its frames are decoded)."""
    folder, out_csv = str(folder), str(out_csv)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder")
    csv_dir = os.path.dirname(os.path.abspath(out_csv))
    summary = CsvSummary(out_csv)
    rows = []
    for path in find_media(folder):
        try:
            if is_image(path):
                height, width = image_size(path)
                num_frames, fps = 1, math.nan
                summary.num_images += 1
            else:
                info = VideoFile(path).info
                num_frames, fps, height, width = info.num_frames, info.fps, info.height, info.width
                summary.num_videos += 1
        except MediaReadError as exc:
            summary.unreadable.append((path, exc.reason))
            logger.warning("unreadable, left out: %s: %s", path, exc.reason)
            continue
        abs_path = os.path.abspath(path)
        shown = os.path.relpath(abs_path, csv_dir) if relative else abs_path
        rows.append((shown, num_frames, height, width, fps))
    os.makedirs(csv_dir, exist_ok=True)
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(out_csv, index=False)
    return summary
