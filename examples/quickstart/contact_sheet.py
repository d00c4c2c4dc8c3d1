"""One PNG that shows what the quickstart's numbers mean: held-out clips (rows) as the real frame,
the spatial VAE alone and the full pipeline after each stage (columns), side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from opensora_vae.data.video_io import VideoFile, is_image, read_image

CELL = 128  # pixels per frame on the sheet (the demo's 64-pixel frames are enlarged, nearest)
LABEL_HEIGHT = 36  # column titles: two short lines
GAP = 4


def _frame(path: Path, index: int | None) -> np.ndarray:
    """Frame `index` (default: the middle one) of a video, or an image."""
    if is_image(path):
        return read_image(path)
    video = VideoFile(path)
    try:
        return video.read([video.num_frames // 2 if index is None else index])[0]
    finally:
        video.close()


def write_contact_sheet(columns: dict[str, Path], out_png: Path, max_rows: int = 4,
                        frame_index: int | None = None) -> Path:
    """`columns`: title -> folder of reconstructions named like the first folder's files (the
    inference output layout: `<save_dir>_ori/NNN.mp4`, `<save_dir>_rec/NNN.mp4`, ...). Rows are
    the first `max_rows` files of the first folder, evenly spaced; each cell is the frame
    `frame_index` (default: the middle frame) of that file in that column's folder."""
    first = next(iter(columns.values()))
    names = sorted(p.name for p in Path(first).iterdir() if p.is_file())
    if not names:
        raise FileNotFoundError(f"no reconstructions in {first}")
    picks = [names[int(i)] for i in np.unique(np.linspace(0, len(names) - 1, min(max_rows, len(names))).round())]
    width = len(columns) * (CELL + GAP) + GAP
    height = LABEL_HEIGHT + len(picks) * (CELL + GAP) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for c, (title, folder) in enumerate(columns.items()):
        x = GAP + c * (CELL + GAP)
        draw.multiline_text((x + 2, 2), title, fill="black", font=font, spacing=2)
        for r, name in enumerate(picks):
            cell = Image.fromarray(_frame(Path(folder) / name, frame_index)).resize((CELL, CELL), Image.NEAREST)
            sheet.paste(cell, (x, LABEL_HEIGHT + r * (CELL + GAP)))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
