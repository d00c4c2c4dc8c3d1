"""Inference samples: a deterministic clip per CSV row, and an honest record when a row fails.

Differences from the training `VideoDataset` (which this reuses for the table and transforms):
- The temporal crop starts at frame 0 and takes `num_frames` frames with stride
  `frame_interval`, as the evaluation protocol does, so a rerun or another checkpoint sees
  exactly the same pixels.
- An image row (or a 1-frame video) is one frame, not a static clip: the pipeline encodes it
  as a 1-frame clip and it is written as a PNG.
- A row that cannot be used is not replaced by the next one (that would duplicate samples and
  shift names): the item carries the reason and the runner counts it as a skip.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import SampleSkipped, VideoDataset
from ..data.transforms import frames_to_clip
from ..data.video_io import MediaReadError, VideoFile, is_image, read_image
from ..metrics.protocol import frame_indices


def sample_name(index: int, num_rows: int) -> str:
    """Zero-padded row index, e.g. `007`: the same name in every output dir, so eval pairs by it."""
    return f"{index:0{max(3, len(str(num_rows - 1)))}d}"


class InferenceDataset(VideoDataset):
    """Items: `{"index", "path", "video": (3, T, H, W) in [-1, 1] or None, "is_image",
    "error": None or the reason the row was skipped}`; T is 1 for images."""

    def __init__(self, data_path, **kwargs):
        # A failing row is reported, never replaced by the next one: nothing is retried.
        super().__init__(data_path, max_retries=1, **kwargs)

    def load(self, index: int, epoch: int | None = None) -> tuple[torch.Tensor, bool]:
        path = self.paths[index]
        if is_image(path):
            return self.transform(frames_to_clip(read_image(path)[None])), True
        video = VideoFile(path)
        total = video.num_frames
        if total == 1:
            return self.transform(frames_to_clip(video.read([0]))), True
        indices = frame_indices(self.num_frames, self.frame_interval)
        if total <= indices[-1]:
            raise SampleSkipped(f"too short ({total} frames < {indices[-1] + 1} needed for "
                                f"{self.num_frames} frames at interval {self.frame_interval})")
        return self.transform.from_video(video, indices), False

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": int(index), "path": self.paths[index], "video": None,
                                "is_image": False, "error": None}
        try:
            item["video"], item["is_image"] = self.load(int(index))
        except (MediaReadError, SampleSkipped, OSError, ValueError) as exc:
            item["error"] = _reason(exc)
        return item


def _reason(exc: Exception) -> str:
    if isinstance(exc, MediaReadError):
        return exc.reason
    if isinstance(exc, SampleSkipped):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the items as a list: images, videos and skips of one batch have different shapes."""
    return items
