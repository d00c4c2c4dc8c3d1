"""Three-stage VAE training: one train step (engine), setup and loop (trainer), checkpoints,
process groups, logging, EMA. Entry point: `scripts/train_vae.py` (plain python or torchrun)."""

from .checkpoint import find_latest_checkpoint, read_training_state, resolve_load
from .ema import EMA
from .engine import StepResult, TrainEngine, freeze_unreached_params, mixed_num_frames
from .trainer import TrainingAborted, Trainer, TrainResult, train

__all__ = ["find_latest_checkpoint", "read_training_state", "resolve_load", "EMA", "StepResult", "TrainEngine", "freeze_unreached_params",
           "mixed_num_frames", "TrainingAborted", "Trainer", "TrainResult", "train"]
