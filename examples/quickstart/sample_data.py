"""The quickstart's dataset: small clips and stills cut from the bundled CC0 city time-lapse.

Hold-out is **in time**: training clips and stills use source frames ``[0, train_frames)``,
held-out clips use the frames after them, which no stage ever sees (same scene, later frames:
the camera keeps moving and the lights change). Every clip is cut at the same spatial windows
of the frame at several scales (short side 64, 96, 128 pixels → crops showing the whole height,
or a half or a third of it), so the model sees the texture at more than one size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from opensora_vae.data.csv_tools import CSV_COLUMNS
from opensora_vae.data.video_io import read_video_frames, video_info, write_image, write_video

REPO_DIR = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_DIR / "assets" / "media" / "city_cc0_0-99.mp4"
# Source frames 0..16, centre square: stills from it show the scene at yet another scale.
DEFAULT_STILLS_SOURCE = REPO_DIR / "assets" / "media" / "city_cc0_256_17f.mp4"


@dataclass
class SampleData:
    root: Path
    train_csv: Path
    heldout_csv: Path
    num_train_videos: int
    num_train_images: int
    num_heldout_videos: int
    train_frame_range: tuple[int, int]  # [start, end) of the source frames used for training
    heldout_frame_range: tuple[int, int]
    clip_size: int
    fps: float

    def describe(self) -> str:
        t0, t1 = self.train_frame_range
        h0, h1 = self.heldout_frame_range
        return (f"{self.num_train_videos} train clips ({self.clip_size}x{self.clip_size}, source frames "
                f"{t0}-{t1 - 1}) + {self.num_train_images} stills; {self.num_heldout_videos} held-out clips "
                f"(source frames {h0}-{h1 - 1}, never seen in training) -> {self.train_csv}, {self.heldout_csv}")


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 (T, H, W, 3) → frames whose shorter side is ``short_side`` (PIL bicubic)."""
    _, h, w, _ = frames.shape
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))  # PIL: (W, H)
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC)) for f in frames])


def window_starts(length: int, size: int) -> list[int]:
    """Evenly spread starts of ``size``-windows covering ``length`` (first at 0, last at the end)."""
    if size > length:
        raise ValueError(f"window {size} is larger than the frame side {length}")
    count = math.ceil(length / size)
    if count == 1:
        return [0]
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def crop_windows(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the ``size``×``size`` crops that together cover a height×width frame."""
    return [(y, x) for y in window_starts(height, size) for x in window_starts(width, size)]


def _write_csv(rows: list[tuple], path: Path) -> None:
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(path, index=False)


def build_sample_data(
    out_dir: str | os.PathLike,
    source: str | os.PathLike = DEFAULT_SOURCE,
    stills_source: str | os.PathLike | None = DEFAULT_STILLS_SOURCE,
    clip_size: int = 64,
    scales: Sequence[int] = (64, 96, 128),
    train_frames: int = 80,
    stills_per_source: int = 3,
    lossless: bool = True,
) -> SampleData:
    """Write ``out_dir/{train,heldout}/`` clips (+ ``train/stills``) and their two CSVs.

    Paths in the CSVs are absolute, so the CSVs work from any working directory. Clips are
    stored lossless by default (64-pixel clips are tiny) so the data is exactly these pixels.
    """
    out = Path(out_dir).resolve()
    info = video_info(source)
    if not 0 < train_frames < info.num_frames:
        raise ValueError(f"train_frames={train_frames}: {source} has {info.num_frames} frames; "
                         "some must remain for the held-out clips")
    if min(scales) < clip_size:
        raise ValueError(f"every scale must be >= clip_size={clip_size}, got {list(scales)}")
    frames = read_video_frames(source, range(info.num_frames))
    fps = info.fps or 24.0
    train_dir, heldout_dir, stills_dir = out / "train", out / "heldout", out / "train" / "stills"
    for folder in (train_dir, heldout_dir, stills_dir):
        folder.mkdir(parents=True, exist_ok=True)

    train_rows, heldout_rows = [], []
    for short_side in scales:
        scaled = resize_short_side(frames, short_side)
        _, h, w, _ = scaled.shape
        for top, left in crop_windows(h, w, clip_size):
            crop = scaled[:, top:top + clip_size, left:left + clip_size]
            name = f"s{short_side}_y{top:03d}_x{left:03d}.mp4"
            for rows, folder, part in ((train_rows, train_dir, crop[:train_frames]),
                                       (heldout_rows, heldout_dir, crop[train_frames:])):
                path = folder / name
                write_video(path, part, fps=fps, lossless=lossless)
                rows.append((str(path), len(part), clip_size, clip_size, fps))

    num_images = 0
    for source_path, stills_kind in ((source, "png"), (stills_source, "jpg")):
        if source_path is None or stills_per_source <= 0:
            continue
        src_info = video_info(source_path)
        # Stills only from training frames (the 17-frame clip is source frames 0..16).
        last = min(src_info.num_frames, train_frames) - 1
        picks = np.linspace(0, last, stills_per_source).round().astype(int).tolist()
        stills = read_video_frames(source_path, picks)
        square = _centre_square(stills)
        small = resize_short_side(square, clip_size)
        for index, image in zip(picks, small):
            path = stills_dir / f"{Path(source_path).stem}_f{index:03d}.{stills_kind}"
            write_image(path, image)
            train_rows.append((str(path), 1, clip_size, clip_size, math.nan))
            num_images += 1

    sample = SampleData(
        root=out, train_csv=out / "train.csv", heldout_csv=out / "heldout.csv",
        num_train_videos=len(train_rows) - num_images, num_train_images=num_images,
        num_heldout_videos=len(heldout_rows), train_frame_range=(0, train_frames),
        heldout_frame_range=(train_frames, info.num_frames), clip_size=clip_size, fps=fps)
    _write_csv(train_rows, sample.train_csv)
    _write_csv(heldout_rows, sample.heldout_csv)
    return sample


def _centre_square(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frames[:, top:top + side, left:left + side]
