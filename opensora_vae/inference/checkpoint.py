"""Which pipeline checkpoint `--ckpt-path` names: a training step dir, a model dir or a hub id."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models import CheckpointError, VideoVAEPipeline
from ..models.checkpoint_io import CONFIG_NAME

MODEL_SUBDIR = "model"  # <outputs>/step_XXXXXXXXX/model holds the save_pretrained files


def resolve_pipeline_path(ckpt_path: str | Path) -> str:
    """The save_pretrained dir (or hub id) to load.

    A training step dir (`step_000001000/` with `model/` inside) resolves to its `model/`; a
    run dir holding several step dirs is refused with the latest one as a suggestion, because
    picking one silently could evaluate the wrong weights.
    """
    if ckpt_path is None or str(ckpt_path).strip() == "":
        raise CheckpointError("no checkpoint given: pass --ckpt-path (a save_pretrained dir, a training "
                              "step dir, or the released hpcai-tech/OpenSora-VAE-v1.2)")
    path = Path(ckpt_path).expanduser()
    if not path.is_dir():
        return str(ckpt_path)  # a hub id, or a missing path that from_pretrained reports
    if (path / CONFIG_NAME).is_file():
        return str(path)
    if (path / MODEL_SUBDIR).is_dir():
        return str(path / MODEL_SUBDIR)
    steps = sorted(p for p in path.glob("step_*") if p.is_dir())
    if steps:
        raise CheckpointError(f"'{path}' is a training run dir with {len(steps)} checkpoints; pass one "
                              f"step dir, e.g. --ckpt-path {steps[-1]}")
    return str(path)  # from_pretrained names the missing files


def load_inference_pipeline(ckpt_path: str | Path, micro_frame_size: int | None,
                            micro_batch_size: int | None,
                            device: torch.device | str = "cpu") -> tuple[VideoVAEPipeline, str]:
    """(pipeline in eval mode on `device`, resolved path); architecture and weights from the
    checkpoint, chunk sizes from the inference config."""
    resolved = resolve_pipeline_path(ckpt_path)
    pipe = VideoVAEPipeline.from_pretrained(resolved, micro_frame_size=micro_frame_size,
                                            micro_batch_size=micro_batch_size)
    return pipe.to(device).eval(), resolved
