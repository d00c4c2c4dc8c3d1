"""Inference samples: a deterministic clip per CSV row, and an honest record when a row fails.

The clip is read by the training data's `ClipReader` with the eval protocol's window
(`ProtocolWindow`), so a rerun, another checkpoint, and the eval of the outputs see exactly the
same pixels; the latent export reads its rows with the same class (or, `whole_video=True`, every
`frame_interval`-th frame of each video: `WholeVideo`). What differs from training is the sampling around it:
- the window starts at frame 0 and takes `num_frames` frames with stride `frame_interval`;
- an image row (or a 1-frame video) is one frame, not a static clip: the pipeline encodes it
  as a 1-frame clip and it is written as a PNG;
- a row that cannot be used is not replaced by the next one (that would duplicate samples and
  shift names): the item carries the reason and the runner counts it as a skip.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset

from ..data.clips import ClipReader, ProtocolWindow, WholeVideo
from ..data.table import load_table
from ..data.transforms import VideoTransform


class InferenceDataset(Dataset):
    """Items: `{"index", "path" (resolved), "source" (the path as written in the CSV), "video":
    (3, T, H, W) in [-1, 1] or None, "is_image", "fps" (of the frames used: source fps /
    frame_interval; None for images and skips), "error": None or the reason the row was skipped}`;
    T is 1 for images.

    `whole_video=False`: frames 0, s, 2s, ... (`num_frames` of them, stride `frame_interval`); a
    shorter video is skipped. `whole_video=True` (the export's option): every `frame_interval`-th
    frame of the video, `num_frames` unused."""

    def __init__(self, data_path: str | os.PathLike, *, num_frames: int, frame_interval: int,
                 image_size: int | tuple[int, int], transform_name: str, read_timeout_s: float | None,
                 whole_video: bool = False):
        self.data_path = str(data_path)
        self.paths = load_table(self.data_path)
        window = WholeVideo(frame_interval) if whole_video else ProtocolWindow(num_frames, frame_interval)
        self.reader = ClipReader(VideoTransform(transform_name, image_size), window, read_timeout_s)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        clip, reason = self.reader.try_read(path)
        return {"index": int(index), "path": path, "source": self.paths.raw(int(index)),
                "video": None if clip is None else clip.video, "is_image": False if clip is None else clip.is_image,
                "fps": None if clip is None else clip.fps, "error": reason}


def collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the items as a list: images, videos and skips of one batch have different shapes."""
    return items


def group_by_shape(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Items split by their video's shape (in first-seen order, each group in item order): one
    batch stacks clips of one shape."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(tuple(item["video"].shape), []).append(item)
    return list(groups.values())
