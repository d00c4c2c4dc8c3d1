"""The eval frame protocol, in one place: which frames, how they are preprocessed, which files
are compared. Used by the eval (`evaluate.py`) and by inference (`inference/dataset.py` takes its
clips with `frame_indices`, so a reconstruction and its eval see the same frames).

- Frames 0, s, 2s, ... (``num_frames`` of them, stride ``s``: the eval's ``--sample_rate``, the
  inference config's ``frame_interval``), keeping those the video has.
- RGB in [0, 1], short side resized to ``resolution`` with
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` on float32 frames and
  no antialiasing (what the reference's pytorchvideo ``ShortSideScale`` does; new long side
  = floor(long / short · resolution)), then a centre crop of ``crop_size`` (offsets rounded as
  torchvision's ``CenterCropVideo``). Metrics take such frames as (N, 3, H, W) batches, checked
  by `check_frame_batches`.
- Files of the two folders are paired by name without extension (``a.mov`` ↔ ``a.mp4``).

Differences from the reference, on purpose: files are paired by name, not by sorted position;
frames are taken with an exact stride (the reference spread them with
``np.linspace(0, s·n - 1, n)``, the same for stride 1); bad input raises a clear error.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.video_io import is_image, is_video
from ..errors import UserError

logger = logging.getLogger(__name__)


class EvalError(UserError, ValueError):
    """Eval settings or media that cannot be scored (mismatched pairs, empty folders, bad flags)."""


@dataclass
class MediaPair:
    name: str
    real: Path
    generated: Path


def frame_indices(num_frames: int, sample_rate: int, available: int | None = None) -> list[int]:
    """0, s, 2s, ... (``num_frames`` of them), keeping those below ``available`` (all if None)."""
    if num_frames < 1 or sample_rate < 1:
        raise EvalError(f"num_frames and sample_rate must be >= 1, got {num_frames}, {sample_rate}")
    stop = num_frames * sample_rate
    if available is not None:
        stop = min(stop, available)
    return list(range(0, stop, sample_rate))


def preprocess(frames: np.ndarray, resolution: int | None, crop_size: int | None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (T, H, W, 3) → float32 (T, 3, h, w) in [0, 1]: short-side resize, centre crop."""
    if not frames.flags.writeable:  # PIL-backed arrays are read-only; torch wants writable
        frames = frames.copy()
    x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    if resolution is not None:
        if w < h:
            size = (int(math.floor(h / w * resolution)), resolution)
        else:
            size = (resolution, int(math.floor(w / h * resolution)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if crop_size is not None:
        h, w = x.shape[-2:]
        if crop_size > min(h, w):
            raise EvalError(f"crop_size {crop_size} is larger than the resized frame {h}x{w}")
        top, left = int(round((h - crop_size) / 2.0)), int(round((w - crop_size) / 2.0))
        x = x[..., top : top + crop_size, left : left + crop_size]
    return x.contiguous()


def check_frame_batches(real: torch.Tensor, fake: torch.Tensor) -> None:
    """Metric inputs: two (N, C, H, W) batches of the same shape."""
    if real.shape != fake.shape:
        raise ValueError(f"frame shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    if real.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) frames, got {tuple(real.shape)}")


def list_media(folder: Path) -> dict[str, Path]:
    """Videos and images of ``folder`` by name without extension (hidden files skipped)."""
    if not folder.is_dir():
        raise EvalError(f"not a folder: {folder}")
    media, ignored = {}, []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not (is_video(path) or is_image(path)):
            ignored.append(path.name)
            continue
        if path.stem in media:
            raise EvalError(f"{folder}: '{media[path.stem].name}' and '{path.name}' have the same name; "
                            f"files are paired by name without extension")
        media[path.stem] = path
    if ignored:
        logger.warning("%s: ignoring %d non-media file(s): %s", folder, len(ignored), ", ".join(ignored[:5]))
    if not media:
        raise EvalError(f"no video or image files in {folder}")
    return media


def pair_files(real_dir: str | os.PathLike, generated_dir: str | os.PathLike) -> list[MediaPair]:
    """Pair files by name without extension (``a.mov`` ↔ ``a.mp4``); sorted by name."""
    real, generated = list_media(Path(real_dir)), list_media(Path(generated_dir))
    only_real = sorted(set(real) - set(generated))
    only_generated = sorted(set(generated) - set(real))
    if only_real or only_generated:
        def show(names: list[str]) -> str:
            return ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "") or "-"
        raise EvalError(
            f"real and generated folders do not hold the same names.\n"
            f"  missing in {generated_dir}: {show(only_real)}\n"
            f"  missing in {real_dir}: {show(only_generated)}"
        )
    return [MediaPair(name, real[name], generated[name]) for name in sorted(real)]
