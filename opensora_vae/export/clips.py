"""The clip of each CSV row an export encodes: the eval protocol's window, or the whole video."""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import SampleSkipped
from ..data.transforms import frames_to_clip
from ..data.video_io import MediaReadError, VideoFile, is_image, read_image
from ..inference.dataset import InferenceDataset, _reason
from ..metrics.protocol import frame_indices


class ExportClips(InferenceDataset):
    """Items: `{"index", "path" (as written in the CSV), "video": (3, T, H, W) in [-1, 1] or None,
    "is_image", "fps" (of the frames used: source fps / frame_interval; None for images),
    "error": None or why the row is skipped}`.

    `whole_video=False`: frames 0, s, 2s, ... (`num_frames` of them, stride `frame_interval`), as
    the eval and inference take them; a shorter video is skipped. `whole_video=True`: every
    `frame_interval`-th frame of the video; the pipeline encodes it one micro-frame chunk at a
    time, so memory is bounded by the chunk, not the video. Images are 1-frame clips.
    """

    def __init__(self, data_path, *, whole_video: bool, **kwargs):
        super().__init__(data_path, **kwargs)
        self.whole_video = whole_video

    def load_clip(self, index: int) -> tuple[torch.Tensor, bool, float | None]:
        path = self.paths[index]
        if is_image(path):
            return self.transform(frames_to_clip(read_image(path)[None])), True, None
        with VideoFile(path) as video:
            total = video.num_frames
            if total == 1:
                return self.transform(frames_to_clip(video.read([0]))), True, None
            if self.whole_video:
                indices = list(range(0, total, self.frame_interval))
            else:
                indices = frame_indices(self.num_frames, self.frame_interval)
                if total <= indices[-1]:
                    raise SampleSkipped(f"too short ({total} frames < {indices[-1] + 1} needed for "
                                        f"{self.num_frames} frames at interval {self.frame_interval})")
            return self.transform.from_video(video, indices), False, video.fps / self.frame_interval

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": int(index), "path": self.paths.raw(int(index)), "video": None,
                                "is_image": False, "fps": None, "error": None}
        try:
            item["video"], item["is_image"], item["fps"] = self.load_clip(int(index))
        except (MediaReadError, SampleSkipped, OSError, ValueError) as exc:
            item["error"] = _reason(exc)
        return item
