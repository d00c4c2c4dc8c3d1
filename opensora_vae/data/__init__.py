"""Data pipeline: video/image IO, transforms, the path table, dataset and its DataLoader, resumable
distributed sampler.

Names are imported on first use (PEP 562), so `from opensora_vae.data.video_io import ...` (the
eval, inference) does not load pandas with the table tools.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "CsvSummary": "csv_tools", "build_csv": "csv_tools",
    "LOADER_TIMEOUT_S": "dataset", "VideoDataset": "dataset", "build_dataloader": "dataset", "collate_samples": "dataset",
    "PathTable": "table", "TableError": "table", "load_table": "table", "load_table_once_per_node": "table",
    "StatefulDistributedSampler": "sampler",
    "VideoTransform": "transforms", "center_crop_resize": "transforms", "frames_to_clip": "transforms",
    "resize_crop_to_fill": "transforms", "temporal_indices": "transforms",
    "LatentDataset": ".export.reader",
    "IMAGE_EXTS": "video_io", "VIDEO_EXTS": "video_io", "MediaReadError": "video_io", "VideoFile": "video_io",
    "VideoInfo": "video_io", "image_size": "video_io", "is_image": "video_io", "is_video": "video_io",
    "read_image": "video_io", "read_video_frames": "video_io", "video_info": "video_io",
    "write_image": "video_io", "write_video": "video_io",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
