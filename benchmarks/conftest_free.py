"""Builds benchmark models without pytest fixtures, from the repository's configs."""

from pathlib import Path

import torch
from mmengine.config import Config

from opensora_vae.config import load_config
from opensora_vae.models import VideoVAEPipeline

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vae"


def tiny_pipeline_for_bench(filters: int = 64) -> VideoVAEPipeline:
    """The tiny spatial VAE of configs/vae/train/tiny/stage1.py with the released temporal VAE's
    depth at `filters` channels (the released model has 128)."""
    model = Config.fromfile(str(CONFIGS / "_base_" / "model_v1_2.py")).model.to_dict()
    model["spatial"] = load_config(CONFIGS / "train" / "tiny" / "stage1.py").model.to_dict()["spatial"]
    model["temporal"]["filters"] = filters
    torch.manual_seed(0)
    return VideoVAEPipeline.from_train_config(model).eval()
