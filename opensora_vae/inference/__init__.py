"""VAE inference: reconstruct a CSV's samples into `<save_dir>_ori/_rec/_spatial`, with metrics."""

from .dataset import InferenceDataset
from .latent_stats import LatentStats
from .outputs import OutputLayout, output_names, sample_name, to_uint8_frames
from .report import FRAME_METRICS, frame_metrics
from .runner import InferenceError, run_inference

__all__ = ["InferenceDataset", "sample_name", "output_names", "LatentStats", "OutputLayout",
           "to_uint8_frames", "FRAME_METRICS", "frame_metrics", "InferenceError", "run_inference"]
