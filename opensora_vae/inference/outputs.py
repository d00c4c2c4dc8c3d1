"""Output layout: `<save_dir>_ori/`, `_rec/`, `_spatial/` (and `_grid/`) with `NNN.mp4`/`NNN.png`,
plus `<save_dir>_metrics.json` beside them (outside the dirs, so the eval's by-name pairing of
`_ori` and `_rec` sees media files only)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.video_io import write_image, write_video
from ..errors import OutputExistsError

SAMPLE_FILE = re.compile(r"^\d+\.(mp4|png)$")


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] → uint8 (T, H, W, 3), rounding as the reference's `save_sample`
    (`(x + 1) / 2`, clamp to [0, 1], `* 255 + 0.5`, truncate)."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) video, got {tuple(video.shape)}")
    x = video.detach().float().add(1).div(2).clamp(0, 1).mul(255).add(0.5).clamp(0, 255)
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


@dataclass
class OutputLayout:
    ori: Path
    rec: Path
    spatial: Path
    grid: Path | None
    metrics_json: Path

    @classmethod
    def from_save_dir(cls, save_dir: str | Path, save_grid: bool) -> "OutputLayout":
        base = str(save_dir).rstrip("/\\")
        if not base:
            raise ValueError("save_dir is empty")
        return cls(ori=Path(base + "_ori"), rec=Path(base + "_rec"), spatial=Path(base + "_spatial"),
                   grid=Path(base + "_grid") if save_grid else None,
                   metrics_json=Path(base + "_metrics.json"))

    @property
    def dirs(self) -> list[Path]:
        return [d for d in (self.ori, self.rec, self.spatial, self.grid) if d is not None]

    def prepare(self, overwrite: bool) -> None:
        """Create the dirs. Earlier samples there would be paired with this run's by the eval,
        so they are an error, or with `overwrite` removed (only `NNN.mp4`/`NNN.png` files)."""
        stale = [p for d in self.dirs if d.is_dir() for p in sorted(d.iterdir()) if SAMPLE_FILE.match(p.name)]
        if stale and not overwrite:
            raise OutputExistsError(
                f"{len(stale)} samples of an earlier run are in the output dirs (e.g. {stale[0]}); the eval "
                "would mix them with this run's. Choose another --save-dir or set "
                "--cfg-options overwrite=True to delete them first.")
        for path in stale:
            path.unlink()
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, ori: np.ndarray, spatial: np.ndarray, rec: np.ndarray, fps: float,
              lossless: bool) -> None:
        """uint8 (T, H, W, 3) frames → `NNN.png` (1-frame samples) or `NNN.mp4` in every dir."""
        outputs = [(self.ori, ori), (self.spatial, spatial), (self.rec, rec)]
        if self.grid is not None:
            outputs.append((self.grid, np.concatenate([ori, spatial, rec], axis=2)))  # side by side
        for folder, frames in outputs:
            if frames.shape[0] == 1:
                write_image(folder / f"{name}.png", frames[0])
            else:
                write_video(folder / f"{name}.mp4", frames, fps=fps, lossless=lossless)
