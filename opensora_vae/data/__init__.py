"""Data pipeline: video/image IO, transforms, the path table, dataset and its DataLoader, resumable
distributed sampler."""

from .csv_tools import CsvSummary, build_csv, find_media
from .dataset import LOADER_TIMEOUT_S, VideoDataset, build_dataloader, collate_samples
from .sampler import StatefulDistributedSampler
from .table import PathTable, TableError, load_table
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
