"""Starting the demo from a real pretrained spatial VAE (``--spatial-vae``) instead of stage 0.

The tiny stage configs describe a tiny spatial VAE; training builds the architecture from the
config before loading ``--ckpt-path``, so with another spatial VAE the demo writes stage
configs that inherit the tiny ones and replace only ``model.spatial.config``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from opensora_vae.models import VideoVAEPipeline


def _subfolder_for(path_or_id: str) -> str | None:
    """Local dirs: 'vae' when the AutoencoderKL lives there (diffusers pipeline layout).
    Hub ids: None (e.g. stabilityai/sd-vae-ft-ema); PixArt-style repos need 'vae' (see caller)."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return "vae" if (local / "vae" / "config.json").is_file() else None
    return None


def save_pipeline_with_spatial(model_cfg: dict, spatial_vae: str, out_dir: str | Path,
                               seed: int = 42) -> tuple[Path, dict]:
    """Pretrained spatial + random tiny temporal, saved to ``out_dir/model``.
    Returns the checkpoint dir and the spatial AutoencoderKL config (for the stage configs)."""
    subfolder = _subfolder_for(spatial_vae)
    cfg = copy.deepcopy(dict(model_cfg))
    cfg["spatial"] = {**cfg["spatial"], "from_pretrained": spatial_vae, "subfolder": subfolder, "config": None}
    cfg["freeze_spatial"] = True
    torch.manual_seed(seed)
    try:
        pipe = VideoVAEPipeline.from_train_config(cfg)
    except FileNotFoundError:
        if subfolder is not None or Path(spatial_vae).expanduser().is_dir():
            raise
        # A hub id of a diffusers pipeline repo keeps its VAE in 'vae/'.
        cfg["spatial"]["subfolder"] = "vae"
        torch.manual_seed(seed)
        pipe = VideoVAEPipeline.from_train_config(cfg)
    checkpoint = Path(out_dir) / "model"
    pipe.save_pretrained(checkpoint)
    return checkpoint, pipe.export_config()["vae_2d"]["config"]


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
