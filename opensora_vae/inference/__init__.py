"""VAE inference: reconstruct a CSV's samples into `<save_dir>_ori/_rec/_spatial`, with metrics."""

from .dataset import InferenceDataset, sample_name
from .latent_stats import LatentStats
from .outputs import OutputLayout, to_uint8_frames
from .report import FRAME_METRICS, frame_metrics
from .runner import InferenceError, run_inference

__all__ = ["InferenceDataset", "sample_name", "LatentStats", "OutputLayout",
           "to_uint8_frames", "FRAME_METRICS", "frame_metrics", "InferenceError", "run_inference"]
