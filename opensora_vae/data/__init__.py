"""Data pipeline: video/image IO, transforms, CSV dataset, resumable distributed sampler."""

from .csv_tools import CsvSummary, build_csv, find_media
from .dataset import VideoDataset, build_dataloader, collate_samples, load_table
from .sampler import StatefulDistributedSampler
from .transforms import (
    VideoTransform,
    center_crop_resize,
    frames_to_clip,
    resize_crop_to_fill,
    temporal_indices,
)
from .video_io import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    MediaReadError,
    VideoFile,
    VideoInfo,
    image_size,
    is_image,
    is_video,
    read_image,
    read_video_frames,
    video_info,
    write_image,
    write_video,
)
