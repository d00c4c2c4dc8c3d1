"""The clip of each CSV row an export encodes: the eval protocol's window, or the whole video.

Read by the one clip reader (`data.clips.ClipReader`) that training, inference and validation use;
only the window and the item's fields are the export's.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset

from ..data.clips import ClipReader, ProtocolWindow, WholeVideo
from ..data.table import load_table
from ..data.transforms import VideoTransform


class ExportClips(Dataset):
    """Items: `{"index", "path" (as written in the CSV), "video": (3, T, H, W) in [-1, 1] or None,
    "is_image", "fps" (of the frames used: source fps / frame_interval; None for images),
    "error": None or why the row is skipped}`.

    `whole_video=False`: frames 0, s, 2s, ... (`num_frames` of them, stride `frame_interval`), as
    the eval and inference take them; a shorter video is skipped. `whole_video=True`: every
    `frame_interval`-th frame of the video; the pipeline encodes it one micro-frame chunk at a
    time, so memory is bounded by the chunk, not the video. Images are 1-frame clips.
    """

    def __init__(self, data_path: str | os.PathLike, *, whole_video: bool, num_frames: int, frame_interval: int,
                 image_size: int | tuple[int, int], transform_name: str, read_timeout_s: float | None):
        self.paths = load_table(str(data_path))
        window = WholeVideo(frame_interval) if whole_video else ProtocolWindow(num_frames, frame_interval)
        self.reader = ClipReader(VideoTransform(transform_name, image_size), window, read_timeout_s)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip, reason = self.reader.try_read(self.paths[index])
        return {"index": int(index), "path": self.paths.raw(int(index)),
                "video": None if clip is None else clip.video, "is_image": False if clip is None else clip.is_image,
                "fps": None if clip is None else clip.fps, "error": reason}
