"""Output layout: `<save_dir>_ori/`, `_rec/`, `_spatial/` (and `_grid/`) with `NNN.mp4`/`NNN.png`,
plus `<save_dir>_metrics.json` beside them (outside the dirs, so the eval's by-name pairing of
`_ori` and `_rec` sees media files only).

An output set is either complete and described by its report, or visibly incomplete: before the
first sample is written, an earlier report is removed and each dir gets the marker
`metrics.protocol.INCOMPLETE_MARKER` (the eval refuses such a dir); the new report is written
whole (write-then-rename) and only then are the markers removed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.video_io import write_image, write_video
from ..errors import OutputExistsError
from ..metrics.evaluate import write_results
from ..metrics.protocol import INCOMPLETE_MARKER

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

    @property
    def _all_dirs(self) -> list[Path]:
        """Every dir of this save_dir, `_grid` too when this run writes none: an earlier run's
        grids would otherwise stay beside this run's samples."""
        grid = self.grid if self.grid is not None else self.ori.with_name(self.ori.name[: -len("_ori")] + "_grid")
        return [self.ori, self.rec, self.spatial, grid]

    def prepare(self, overwrite: bool, planned_samples: int) -> None:
        """Before the first sample: samples of an earlier run in the dirs are an error (the eval
        would pair them with this run's), or with `overwrite` removed (only `NNN.mp4`/`NNN.png`
        files). An earlier report is removed and every dir is marked incomplete until `finish`."""
        stale = [p for d in self._all_dirs if d.is_dir() for p in sorted(d.iterdir()) if SAMPLE_FILE.match(p.name)]
        if stale and not overwrite:
            samples = len({p.stem for p in stale})
            raise OutputExistsError(
                f"{samples} samples of an earlier run are in the output dirs (e.g. {stale[0]}); the eval "
                "would mix them with this run's. Choose another --save-dir or set "
                "--cfg-options overwrite=True to delete them first.")
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
            (d / INCOMPLETE_MARKER).write_text(json.dumps({"planned_samples": planned_samples,
                                                           "report": str(self.metrics_json)}) + "\n")
        self.metrics_json.unlink(missing_ok=True)
        for path in stale:
            path.unlink()

    def finish(self, report: dict) -> None:
        """The report, written whole or not at all; then the set is marked complete."""
        write_results(self.metrics_json, json.loads(json.dumps(report, default=str)))
        for d in self.dirs:
            (d / INCOMPLETE_MARKER).unlink(missing_ok=True)

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
