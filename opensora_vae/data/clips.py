"""The one clip reader: a media path -> a model clip (3, T, H, W) in [-1, 1], or the reason the
sample is skipped. Which frames it takes is a window policy:

- `RandomWindow` (training): a random window of ``num_frames * frame_interval`` frames drawn from
  the caller's generator (`temporal_indices`); an image is a static clip of ``num_frames`` frames.
- `ProtocolWindow` (inference, in-loop validation, latent export): the eval protocol's frames
  0, s, 2s, ... (`metrics.protocol.frame_indices`), so a reconstruction and its eval see the
  same pixels; an image is one frame.

Both windows skip a video that does not hold the whole window ("too short ..."): the reference
padded such videos by repeating frames, which teaches the temporal VAE that motion stops. A
1-frame video is read as an image.

    reader = ClipReader(VideoTransform("center", (256, 256)), ProtocolWindow(17, 1))
    clip = reader.read(path)             # Clip(video, is_image); raises the errors in READ_ERRORS
    clip, reason = reader.try_read(path) # (None, "too short (...)") instead of raising
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

import numpy as np
import torch

from .transforms import VideoTransform, frames_to_clip, temporal_indices
from .video_io import MediaReadError, VideoFile, is_image, read_image
from ..metrics.protocol import frame_indices


class SampleSkipped(Exception):
    """A readable sample that cannot be used (e.g. a video shorter than the clip)."""


# What a read of a bad sample raises: the sample is skipped with `skip_reason`, never fatal.
READ_ERRORS = (MediaReadError, SampleSkipped, OSError, ValueError)


def skip_reason(exc: BaseException) -> str:
    """The reason recorded for a skipped sample (one of READ_ERRORS)."""
    if isinstance(exc, MediaReadError):
        return exc.reason
    if isinstance(exc, SampleSkipped):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Window(Protocol):
    """Which frames of a video make the clip, and how many frames an image becomes."""

    num_frames: int
    frame_interval: int

    @property
    def image_frames(self) -> int: ...

    def indices(self, total: int, rng: np.random.Generator | None) -> Sequence[int]:
        """Frame indices of a ``total``-frame video; raises SampleSkipped when it is too short."""


@dataclass(frozen=True)
class RandomWindow:
    """Training: ``num_frames`` frames spread over a random window of ``num_frames *
    frame_interval`` frames (needs ``rng``); an image is tiled to ``num_frames`` frames."""

    num_frames: int
    frame_interval: int

    @property
    def image_frames(self) -> int:
        return self.num_frames

    def indices(self, total: int, rng: np.random.Generator | None) -> Sequence[int]:
        window = self.num_frames * self.frame_interval
        if total < window:
            raise SampleSkipped(f"too short ({total} < {window})")
        if rng is None:
            raise ValueError("RandomWindow needs a random generator")
        return temporal_indices(total, self.num_frames, self.frame_interval, rng)


@dataclass(frozen=True)
class ProtocolWindow:
    """The eval protocol's frames 0, s, 2s, ... (``num_frames`` of them, s = ``frame_interval``),
    all of which the video must hold; an image is one frame."""

    num_frames: int
    frame_interval: int

    @property
    def image_frames(self) -> int:
        return 1

    def indices(self, total: int, rng: np.random.Generator | None = None) -> Sequence[int]:
        indices = frame_indices(self.num_frames, self.frame_interval)
        if total <= indices[-1]:
            raise SampleSkipped(f"too short ({total} frames < {indices[-1] + 1} needed for "
                                f"{self.num_frames} frames at interval {self.frame_interval})")
        return indices


class Clip(NamedTuple):
    video: torch.Tensor  # (3, T, H, W) float32 in [-1, 1]
    is_image: bool


class ClipReader:
    """Reads one sample's clip: `transform` (spatial size and crop) on the frames `window` picks."""

    def __init__(self, transform: VideoTransform, window: Window):
        self.transform = transform
        self.window = window

    def read(self, path: str | os.PathLike, rng: np.random.Generator | None = None) -> Clip:
        """The clip of ``path``; raises one of READ_ERRORS for a sample that cannot be used."""
        path = str(path)
        if is_image(path):
            return Clip(self._static_clip(read_image(path)), True)
        with VideoFile(path) as video:
            total = video.num_frames
            if total == 1:
                return Clip(self._static_clip(video.read([0])[0]), True)
            indices = self.window.indices(total, rng)
            return Clip(self.transform.from_video(video, indices), False)

    def try_read(self, path: str | os.PathLike, rng: np.random.Generator | None = None
                 ) -> tuple[Clip | None, str | None]:
        """(clip, None), or (None, the skip reason) for a sample that cannot be used."""
        try:
            return self.read(path, rng), None
        except READ_ERRORS as exc:
            return None, skip_reason(exc)

    def _static_clip(self, frame: np.ndarray) -> torch.Tensor:
        # Transform the single frame, then repeat it: same pixels as transforming T copies.
        clip = self.transform(frames_to_clip(frame[None]))
        return clip.expand(-1, self.window.image_frames, -1, -1).contiguous()
