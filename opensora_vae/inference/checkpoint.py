"""Which pipeline checkpoint `--ckpt-path` names: a training step dir, a model dir or a hub id."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models import CheckpointError, VideoVAEPipeline
from ..models.checkpoint_io import resolve_pipeline_dir

def resolve_pipeline_path(ckpt_path: str | Path) -> str:
    """The save_pretrained dir (or hub id) to load; see `models.checkpoint_io.resolve_pipeline_dir`."""
    if ckpt_path is None or str(ckpt_path).strip() == "":
        raise CheckpointError("no checkpoint given: pass --ckpt-path (a save_pretrained dir, a training "
                              "step dir, or the released hpcai-tech/OpenSora-VAE-v1.2)")
    return resolve_pipeline_dir(ckpt_path)


def load_inference_pipeline(ckpt_path: str | Path, micro_frame_size: int | None,
                            micro_batch_size: int | None,
                            device: torch.device | str = "cpu") -> tuple[VideoVAEPipeline, str]:
    """(pipeline in eval mode on `device`, resolved path); architecture and weights from the
    checkpoint, chunk sizes from the inference config."""
    resolved = resolve_pipeline_path(ckpt_path)
    pipe = VideoVAEPipeline.from_pretrained(resolved, micro_frame_size=micro_frame_size,
                                            micro_batch_size=micro_batch_size)
    return pipe.to(device).eval(), resolved
