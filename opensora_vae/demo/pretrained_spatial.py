"""Starting the demo from a real pretrained spatial VAE (``--spatial-vae``) instead of stage 0.

The tiny stage configs describe a tiny spatial VAE; training builds the architecture from the
config before loading ``--ckpt-path``, so with another spatial VAE the demo writes stage
configs that inherit the tiny ones and replace only ``model.spatial.config``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models import SpatialVAE, TemporalVAE, VideoVAEPipeline


def _subfolder_for(path_or_id: str) -> str | None:
    """Local dirs: 'vae' when the AutoencoderKL lives there (diffusers pipeline layout).
    Hub ids: None (e.g. stabilityai/sd-vae-ft-ema); PixArt-style repos need 'vae' (see caller)."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return "vae" if (local / "vae" / "config.json").is_file() else None
    return None


def load_spatial(path_or_id: str, micro_batch_size: int | None, scaling_factor: float) -> SpatialVAE:
    subfolder = _subfolder_for(path_or_id)
    try:
        return SpatialVAE.from_pretrained(path_or_id, subfolder=subfolder, micro_batch_size=micro_batch_size,
                                          scaling_factor=scaling_factor)
    except FileNotFoundError:
        if subfolder is not None or Path(path_or_id).expanduser().is_dir():
            raise
        # A hub id of a diffusers pipeline repo keeps its VAE in 'vae/'.
        return SpatialVAE.from_pretrained(path_or_id, subfolder="vae", micro_batch_size=micro_batch_size,
                                          scaling_factor=scaling_factor)


def save_pipeline_with_spatial(model_cfg: dict, spatial_vae: str, out_dir: str | Path,
                               seed: int = 42) -> tuple[Path, dict]:
    """Pretrained spatial + random tiny temporal, saved to ``out_dir/model``.
    Returns the checkpoint dir and the spatial AutoencoderKL config (for the stage configs)."""
    spatial_cfg = model_cfg["spatial"]
    spatial = load_spatial(spatial_vae, spatial_cfg["micro_batch_size"], spatial_cfg["scaling_factor"])
    torch.manual_seed(seed)
    pipe = VideoVAEPipeline(spatial, TemporalVAE(**dict(model_cfg["temporal"])),
                            micro_frame_size=model_cfg["micro_frame_size"], shift=model_cfg["shift"],
                            scale=model_cfg["scale"], freeze_spatial=True)
    checkpoint = Path(out_dir) / "model"
    pipe.save_pretrained(checkpoint)
    config = {k: v for k, v in dict(spatial.module.config).items() if not k.startswith("_") or k == "_class_name"}
    return checkpoint, config


def write_stage_configs(base_configs: dict[int, Path], spatial_config: dict, out_dir: str | Path) -> dict[int, Path]:
    """``out_dir/stage{k}.py`` = the tiny stage k config with this spatial architecture."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for stage, base in base_configs.items():
        path = out_dir / f"stage{stage}.py"
        body = {"_delete_": True, **spatial_config}
        path.write_text(
            "# Written by the quickstart for --spatial-vae: the tiny stage config with a pretrained spatial VAE.\n"
            f"_base_ = [{os.fspath(Path(base).resolve())!r}]\n"
            f"model = dict(spatial=dict(config={body!r}))\n")
        written[stage] = path
    return written
