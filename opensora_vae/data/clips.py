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

    reader = ClipReader(VideoTransform("center", (256, 256)), ProtocolWindow(17, 1), read_timeout_s=600)
    clip = reader.read(path)             # Clip(video, is_image, fps); raises the errors in READ_ERRORS
    clip, reason = reader.try_read(path) # (None, "too short (...)") instead of raising

A read that does not finish within ``read_timeout_s`` (config ``dataset.read_timeout_s``: a hung
network mount, a device that never answers) raises `ReadTimeoutError` naming the file, in the main
process and in DataLoader workers alike. That error is not a skip: the run stops, since the reader
thread it leaves behind cannot be cancelled and the storage is the likely fault, not the file.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

import numpy as np
import torch

from .transforms import VideoTransform, frames_to_clip, temporal_indices
from .video_io import MediaReadError, VideoFile, is_image, read_image
from ..errors import UserError
from ..metrics.protocol import frame_indices


class SampleReadError(UserError, RuntimeError):
    """A problem with the samples one process read that stops the run (`reason` says which).

    When it is raised in a DataLoader worker, torch raises it again in the main process with the
    worker's traceback in the message; `reason` is the original message either way.
    """

    same_on_all_ranks = False  # about the samples this rank read

    def one_line(self) -> str:
        return self.reason

    @property
    def reason(self) -> str:
        text = str(self)
        if "Original Traceback" not in text:
            return text
        return text.rstrip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]


class ReadTimeoutError(SampleReadError):
    """A sample read that did not finish within ``dataset.read_timeout_s``."""


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
    all of which the video must hold; an image is one frame. ``spread``: the protocol card's
    `frame_spread` ("stride", or "linspace" for Open-Sora-Plan's; `metrics.protocol.frame_indices`)."""

    num_frames: int
    frame_interval: int
    spread: str = "stride"

    @property
    def image_frames(self) -> int:
        return 1

    def indices(self, total: int, rng: np.random.Generator | None = None) -> Sequence[int]:
        indices = frame_indices(self.num_frames, self.frame_interval, spread=self.spread)
        if total <= indices[-1]:
            raise SampleSkipped(f"too short ({total} frames < {indices[-1] + 1} needed for "
                                f"{self.num_frames} frames at interval {self.frame_interval})")
        return indices


@dataclass(frozen=True)
class WholeVideo:
    """Latent export of whole videos: every ``frame_interval``-th frame, however many there are
    (the pipeline encodes them one micro-frame chunk at a time); an image is one frame."""

    frame_interval: int
    num_frames: None = None  # no fixed length

    @property
    def image_frames(self) -> int:
        return 1

    def indices(self, total: int, rng: np.random.Generator | None = None) -> Sequence[int]:
        return range(0, total, self.frame_interval)


class Clip(NamedTuple):
    video: torch.Tensor  # (3, T, H, W) float32 in [-1, 1]
    is_image: bool
    fps: float | None = None  # of the frames taken (source fps / frame_interval); None for images


class ClipReader:
    """Reads one sample's clip: `transform` (spatial size and crop) on the frames `window` picks,
    within ``read_timeout_s`` seconds (None: no limit)."""

    def __init__(self, transform: VideoTransform, window: Window, read_timeout_s: float | None = None):
        self.transform = transform
        self.window = window
        self.read_timeout_s = read_timeout_s

    def read(self, path: str | os.PathLike, rng: np.random.Generator | None = None) -> Clip:
        """The clip of ``path``; raises one of READ_ERRORS for a sample that cannot be used, and
        ReadTimeoutError when the read does not finish in time."""
        path = str(path)
        if self.read_timeout_s is None:
            return self._read(path, rng)
        # The read runs in a daemon thread this one waits for: a read blocked in C (FFmpeg, the
        # kernel) cannot be interrupted, but the run no longer waits for it. A signal alarm would
        # work only in the main thread and not while FFmpeg retries an interrupted read.
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["clip"] = self._read(path, rng)
            except BaseException as exc:  # handed to the waiting thread, raised there
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="clip-read", daemon=True)
        thread.start()
        thread.join(self.read_timeout_s)
        if thread.is_alive():
            raise ReadTimeoutError(
                f"reading {path} did not finish within {self.read_timeout_s:g} s (dataset.read_timeout_s): "
                f"check the storage it is on, remove the row, or raise the limit with --cfg-options "
                f"dataset.read_timeout_s=<seconds>")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["clip"]  # type: ignore[return-value]

    def _read(self, path: str, rng: np.random.Generator | None) -> Clip:
        if is_image(path):
            return Clip(self._static_clip(read_image(path)), True)
        with VideoFile(path) as video:
            total = video.num_frames
            if total == 1:
                return Clip(self._static_clip(video.read([0])[0]), True)
            indices = self.window.indices(total, rng)
            return Clip(self.transform.from_video(video, indices), False, video.fps / self.window.frame_interval)

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
