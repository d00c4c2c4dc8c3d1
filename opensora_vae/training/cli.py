"""What `scripts/train_vae.py` runs once its arguments are parsed."""

from __future__ import annotations

import os
import sys
from typing import Iterable

from ..config import ConfigError, load_config
from ..data.dataset import TableError, UnreadableSamplesError
from ..models.checkpoint_io import CheckpointError
from .trainer import TrainingAborted, TrainResult, train

# Errors the user can fix from the message alone: no traceback, exit status 2.
USER_ERRORS = (ConfigError, CheckpointError, TrainingAborted, FileNotFoundError, TableError,
               UnreadableSamplesError)


def train_from_args(config: str, cfg_options: Iterable[str] | None, cli: dict) -> TrainResult:
    try:
        cfg = load_config(config, kind="train", cfg_options=cfg_options, cli=cli)
        return train(cfg)
    except USER_ERRORS as err:
        rank = os.environ.get("RANK")
        message = getattr(err, "reason", err)  # without a DataLoader worker's traceback
        print(f"error{f' (rank {rank})' if rank is not None else ''}: {message}", file=sys.stderr)
        raise SystemExit(2) from err
