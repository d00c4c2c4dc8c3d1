"""Builds a `VideoVAEPipeline` from the `model = dict(...)` section of a config file."""

from __future__ import annotations

import logging

from .checkpoint_io import (load_state_dict_file, load_weights_into, read_pipeline_config,
                            resolve_checkpoint_files)
from .pipeline import VideoVAEPipeline
from .spatial import SpatialVAE
from .temporal import TemporalVAE

logger = logging.getLogger(__name__)


def build_pipeline(model_cfg: dict, ckpt_path: str | None = None) -> VideoVAEPipeline:
    """Architecture from the config; weights from `ckpt_path` (or `model.from_pretrained`).

    With a pipeline checkpoint the spatial VAE is built from its config without downloading its
    separate weights (the checkpoint holds them). Without one, the spatial VAE comes from
    `model.spatial.from_pretrained` (hub id or local dir) or, if that is None, random weights
    with `model.spatial.config` (tiny test/demo models).
    """
    spatial_cfg = dict(model_cfg["spatial"])
    ckpt_path = ckpt_path or model_cfg.get("from_pretrained")
    common = dict(micro_batch_size=spatial_cfg["micro_batch_size"],
                  scaling_factor=spatial_cfg["scaling_factor"])
    if ckpt_path is None and spatial_cfg.get("from_pretrained"):
        spatial = SpatialVAE.from_pretrained(
            spatial_cfg["from_pretrained"], subfolder=spatial_cfg.get("subfolder"),
            local_files_only=spatial_cfg.get("local_files_only", False), **common)
    else:
        spatial = SpatialVAE.from_config(spatial_cfg.get("config"), **common)
    temporal = TemporalVAE(**dict(model_cfg["temporal"]))
    pipe = VideoVAEPipeline(spatial, temporal, micro_frame_size=model_cfg["micro_frame_size"],
                            shift=model_cfg["shift"], scale=model_cfg["scale"],
                            freeze_spatial=model_cfg["freeze_spatial"])
    if ckpt_path is not None:
        config, weights = resolve_checkpoint_files(ckpt_path)
        # The architecture comes from the train config, but a damaged config.json means a
        # damaged checkpoint: refuse it rather than train on from it.
        read_pipeline_config(config)
        load_weights_into(pipe, load_state_dict_file(weights), str(ckpt_path))
        logger.info("loaded pipeline weights from %s", ckpt_path)
    return pipe
