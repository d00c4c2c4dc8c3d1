"""Spatial and temporal transforms with Open-Sora 1.2 semantics.

A clip goes uint8 (T, H, W, 3) -> float (T, C, H, W) in [0, 1] -> spatial crop/resize ->
(C, T, H, W) in [-1, 1], the layout and range the VAE consumes.

A video sample is best made with ``VideoTransform.from_video``, which reduces every frame to
the output size as soon as it is decoded, with the same float operations (so the same result
bit for bit): its memory is one source frame, not the whole clip as float32.

Resizing is ``F.interpolate(mode="bilinear", align_corners=False)`` without antialiasing, as
in the reference (``opensora/datasets/video_transforms.py``). Images go through the same
transform as videos (the reference used ADM's ``center_crop_arr`` for images: a PIL box/bicubic
resize), so an image and a static video of it give the same pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .video_io import VideoFile

TRANSFORM_NAMES = ("center", "resize_crop")


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = (int(s) for s in size)
    return height, width


def _check_clip(clip: torch.Tensor) -> None:
    if not torch.is_tensor(clip) or clip.ndim != 4 or not clip.is_floating_point():
        raise ValueError(f"expected a float clip (T, C, H, W), got {getattr(clip, 'shape', clip)}")


def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    # Each plane as its own 1-channel image: torch's kernel for several channels rounds some
    # values 1 ulp differently on one thread than on several; one channel at a time gives the
    # multi-thread values at any thread count, and the same as a frame reduced plane by plane.
    planes = clip.reshape(-1, 1, *clip.shape[-2:])
    return F.interpolate(planes, size=size, mode="bilinear", align_corners=False).reshape(*clip.shape[:-2], *size)


def center_crop_resize(clip: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Centre-crop the largest region with the target aspect ratio, then resize to ``size``.

    For square targets this is the reference's CenterCropResizeVideo (crop a square of the
    short edge); for other targets the reference squashed the square crop, we keep the aspect.
    """
    _check_clip(clip)
    th, tw = _size2(size)
    h, w = clip.shape[-2:]
    if w * th > h * tw:  # too wide: keep full height
        ch, cw = h, max(1, min(w, round(h * tw / th)))
    else:  # too tall (or exact): keep full width
        ch, cw = max(1, min(h, round(w * th / tw))), w
    i = int(round((h - ch) / 2.0))
    j = int(round((w - cw) / 2.0))
    return _resize(clip[..., i : i + ch, j : j + cw], (th, tw))


def resize_crop_to_fill(clip: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize so the clip covers ``size`` (scale = max(th/h, tw/w)), then centre-crop it
    (the reference's ResizeCrop, including its rounding of the crop offset)."""
    _check_clip(clip)
    th, tw = _size2(size)
    h, w = clip.shape[-2:]
    rh, rw = th / h, tw / w
    if rh > rw:
        sh, sw = th, round(w * rh)
        clip = _resize(clip, (sh, sw))
        i, j = 0, (sw - tw) // 2
    else:
        sh, sw = round(h * rw), tw
        clip = _resize(clip, (sh, sw))
        i, j = (sh - th) // 2, 0
    return clip[..., i : i + th, j : j + tw]


_SPATIAL: dict[str, Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]] = {
    "center": center_crop_resize,
    "resize_crop": resize_crop_to_fill,
}


def _unit_float(values: np.ndarray) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], same shape."""
    # astype copies, so read-only decoder buffers are never aliased by the tensor.
    return torch.from_numpy(values.astype(np.float32)).div_(255.0)


def frames_to_clip(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [0, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    return _unit_float(frames.transpose(0, 3, 1, 2))


class VideoTransform:
    """float (T, C, H, W) in [0, 1] -> float (C, T, H', W') in [-1, 1]."""

    def __init__(self, name: str = "center", image_size: int | tuple[int, int] = (256, 256)):
        self.name = name
        self.image_size = _size2(image_size)
        self._spatial = _SPATIAL[name]

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self._to_model(self._spatial(clip, self.image_size))

    def from_video(self, video: "VideoFile", indices: Sequence[int]) -> torch.Tensor:
        """``self(frames_to_clip(video.read(indices)))`` for a VideoFile ``video``, bit for bit,
        with each frame reduced to the output size as soon as it is decoded, one colour plane at
        a time (the crop and resize work plane by plane): the peak memory of a sample is one
        source frame as uint8 plus one plane as float32, whatever the clip length.

        The float plane is one buffer for the whole clip, refilled for every plane: allocating
        it per plane costs a fresh mmap (page faults, zeroing) each time in a loader worker,
        whose malloc thresholds are fixed (`dataset._fix_malloc_thresholds`): 13% of a 17-frame
        720x405 read there (benchmarks/bench_export.py)."""
        planes: dict[tuple[int, int], torch.Tensor] = {}  # float32 buffer by source frame size
        return self._to_model(torch.stack(video.read(indices, each=lambda frame: self._frame(frame, planes))))

    def _frame(self, frame: np.ndarray, planes: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """uint8 (H, W, 3) -> the spatial transform's float (3, H', W') in [0, 1], each colour plane
        converted in the clip's buffer (same values as `_unit_float`: float32 of the byte, / 255)
        and copied out before the next plane refills it."""
        buf = planes.get(frame.shape[:2])
        if buf is None:
            buf = planes[frame.shape[:2]] = torch.empty(frame.shape[:2], dtype=torch.float32)
        out = torch.empty(3, *self.image_size)
        for c in range(3):
            np.copyto(buf.numpy(), frame[:, :, c])  # uint8 -> float32, exact
            out[c] = self._spatial(buf.div_(255.0)[None, None], self.image_size)[0, 0]
        return out

    @staticmethod
    def _to_model(clip: torch.Tensor) -> torch.Tensor:
        """float (T, C, H, W) in [0, 1] -> (C, T, H, W) in [-1, 1]."""
        return (clip * 2.0 - 1.0).permute(1, 0, 2, 3).contiguous()

    def __repr__(self) -> str:
        return f"VideoTransform(name={self.name!r}, image_size={self.image_size})"


def temporal_indices(
    total_frames: int, num_frames: int, frame_interval: int, rng: np.random.Generator
) -> np.ndarray:
    """Frame indices of a random window of ``num_frames * frame_interval`` frames, spread
    with ``np.linspace(start, end - 1, num_frames)`` (the reference's TemporalRandomCrop).

    Every window start in ``0 .. total - window`` is possible; the reference's
    ``randint(0, total - window - 1)`` never picked the last one.
    """
    window = num_frames * frame_interval
    if num_frames < 1 or frame_interval < 1:
        raise ValueError("num_frames and frame_interval must be >= 1")
    if total_frames < window:
        raise ValueError(f"too short ({total_frames} < {window})")
    start = int(rng.integers(0, total_frames - window + 1))
    return np.linspace(start, start + window - 1, num_frames).astype(int)
