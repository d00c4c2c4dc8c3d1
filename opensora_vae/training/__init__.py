"""Three-stage VAE training: the trainer (setup, loop, one step), checkpoints and the outputs
folder, clip mixing, logging, EMA. Entry point: `scripts/train_vae.py` (plain python or torchrun)."""

from .checkpoint import CheckpointManager, find_latest_checkpoint, read_training_state
from .ema import EMA
from .mixing import MIXED_STRATEGIES, mixed_num_frames
from .trainer import StepResult, Trainer, TrainingAborted, TrainResult, train

__all__ = ["CheckpointManager", "find_latest_checkpoint", "read_training_state", "EMA", "MIXED_STRATEGIES",
           "mixed_num_frames", "StepResult", "Trainer", "TrainingAborted", "TrainResult", "train"]
