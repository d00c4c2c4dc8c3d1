"""VAE inference: reconstruct a CSV's samples into `<save_dir>_ori/_rec/_spatial`, with metrics."""

from .checkpoint import load_inference_pipeline, resolve_pipeline_path
from .dataset import InferenceDataset, sample_name
from .latent_stats import LatentStats
from .outputs import OutputLayout
from .reconstruct import Reconstruction, frame_metrics, reconstruct_clip, to_uint8_frames
from .runner import InferenceError, run_inference

__all__ = ["load_inference_pipeline", "resolve_pipeline_path", "InferenceDataset",
           "sample_name", "LatentStats", "OutputLayout", "Reconstruction", "frame_metrics",
           "reconstruct_clip", "to_uint8_frames", "InferenceError", "run_inference"]
