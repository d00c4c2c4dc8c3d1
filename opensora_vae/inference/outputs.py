"""Output layout: `<save_dir>_ori/`, `_rec/`, `_spatial/` (and `_grid/`) with `<name>.mp4` (clips) or
`<name>.png` (images), where a sample's name is its zero-padded row index (`003`, the reference's
layout) or with `output_names="stem"` its source file's name without extension; plus `<save_dir>_metrics.json` beside them (outside the dirs, so the eval's by-name pairing of
`_ori` and `_rec` sees media files only).

An output set is either complete and described by its report, or visibly incomplete: before the
first sample is written, an earlier report is removed and each dir gets the marker
`metrics.protocol.INCOMPLETE_MARKER` (the eval refuses such a dir); the new report is written
whole (write-then-rename) and only then are the markers removed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.video_io import is_image, is_video, write_image, write_video
from ..errors import OutputExistsError
from ..metrics.evaluate import write_results
from ..metrics.protocol import INCOMPLETE_MARKER

OUTPUT_NAME_STYLES = ("index", "stem")  # config key `output_names`


def sample_name(index: int, num_rows: int) -> str:
    """Zero-padded row index, e.g. `007`: the same name in every output dir, so eval pairs by it."""
    return f"{index:0{max(3, len(str(num_rows - 1)))}d}"


def output_names(paths: Sequence[str], rows: Sequence[int], style: str) -> dict[int, str]:
    """Row -> output name for ``rows`` of the table ``paths``: `sample_name` ("index") or the source
    file's stem ("stem"). Raises ValueError when two rows would share a name (one file written
    twice) or a stem is hidden (the eval ignores hidden files)."""
    if style == "index":
        return {i: sample_name(i, len(paths)) for i in rows}
    if style != "stem":
        raise ValueError(f"output_names must be one of {OUTPUT_NAME_STYLES}, got {style!r}")
    names, first = {}, {}
    for i in rows:
        stem = Path(paths[i]).stem
        if not stem or stem.startswith("."):
            raise ValueError(f"row {i} ({paths[i]}): '{stem}' cannot name an output file (hidden or empty); "
                             "use output_names='index'")
        if stem in first:
            raise ValueError(f"rows {first[stem]} and {i} both have the file name '{stem}' ({paths[first[stem]]}, "
                             f"{paths[i]}): with output_names='stem' outputs would overwrite each other; use "
                             "output_names='index'")
        first[stem], names[i] = i, stem
    return names


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
        would pair them with this run's), or with `overwrite` removed (only video and image
        files). An earlier report is removed and every dir is marked incomplete until `finish`."""
        stale = [p for d in self._all_dirs if d.is_dir() for p in sorted(d.iterdir())
                 if p.is_file() and not p.name.startswith(".") and (is_video(p) or is_image(p))]
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
              lossless: bool) -> dict[str, Path]:
        """uint8 (T, H, W, 3) frames → `<name>.png` (1-frame samples) or `<name>.mp4` in every dir;
        returns the files by kind ("ori", "spatial", "rec", "grid")."""
        outputs = {"ori": (self.ori, ori), "spatial": (self.spatial, spatial), "rec": (self.rec, rec)}
        if self.grid is not None:
            outputs["grid"] = (self.grid, np.concatenate([ori, spatial, rec], axis=2))  # side by side
        files = {}
        for kind, (folder, frames) in outputs.items():
            if frames.shape[0] == 1:
                files[kind] = folder / f"{name}.png"
                write_image(files[kind], frames[0])
            else:
                files[kind] = folder / f"{name}.mp4"
                write_video(files[kind], frames, fps=fps, lossless=lossless)
        return files
