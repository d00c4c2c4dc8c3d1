"""Frozen-or-trainable per-frame spatial VAE: diffusers `AutoencoderKL` applied to video."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import AutoencoderKL

from .checkpoint_io import RELEASED_REPO, hub_local_files_only, hub_unreachable
from ..config import model_defaults
from ..errors import MissingWeightsError

# The released model's spatial VAE settings; their one place is configs/vae/_base_/model_v1_2.py
# (model.spatial): SD's scaling factor 0.18215, not the SDXL config's 0.13025, and the hub id.
_RELEASED = model_defaults()["spatial"]
SCALING_FACTOR = _RELEASED["scaling_factor"]
DEFAULT_SPATIAL_REPO = _RELEASED["from_pretrained"]
SDXL_VAE_CONFIG_PATH = Path(__file__).with_name("configs") / "sdxl_vae.json"


def sdxl_vae_config() -> dict:
    """Architecture of the SDXL VAE (the spatial part of the released checkpoint)."""
    return json.loads(SDXL_VAE_CONFIG_PATH.read_text())


class SpatialVAE(nn.Module):
    """Applies an `AutoencoderKL` frame by frame to `(B, C, T, H, W)` video.

    Frames are processed `micro_batch_size` at a time so peak memory does not grow with T.
    """

    def __init__(self, module: AutoencoderKL, micro_batch_size: int | None = _RELEASED["micro_batch_size"],
                 scaling_factor: float = SCALING_FACTOR):
        super().__init__()
        self.module = module
        self.micro_batch_size = micro_batch_size
        self.scaling_factor = scaling_factor
        self.out_channels = module.config.latent_channels
        self.downsample = 2 ** (len(module.config.block_out_channels) - 1)

    @classmethod
    def from_config(cls, config: dict | None = None, **kwargs) -> "SpatialVAE":
        """Random weights with the given AutoencoderKL config (default: SDXL VAE)."""
        config = dict(config if config is not None else sdxl_vae_config())
        return cls(AutoencoderKL.from_config(config), **kwargs)

    @classmethod
    def from_pretrained(cls, repo_or_path: str, subfolder: str | None = None,
                        micro_batch_size: int | None = _RELEASED["micro_batch_size"],
                        scaling_factor: float = SCALING_FACTOR,
                        local_files_only: bool = False, cache_dir: str | None = None) -> "SpatialVAE":
        """A diffusers AutoencoderKL from a hub id or local dir, e.g. the released spatial VAE:
        `SpatialVAE.from_pretrained(DEFAULT_SPATIAL_REPO, subfolder="vae")`."""
        offline = not local_files_only and hub_local_files_only(repo_or_path)
        try:
            module = AutoencoderKL.from_pretrained(
                repo_or_path, subfolder=subfolder, local_files_only=local_files_only or offline,
                cache_dir=cache_dir)
        except Exception as err:  # diffusers raises OSError/EnvironmentError/HF errors alike
            where = f"'{repo_or_path}'" + (f" (subfolder '{subfolder}')" if subfolder else "")
            why = f"{hub_unreachable()}, and it is not in the local hub cache" if offline else err
            raise MissingWeightsError(
                f"Could not load the spatial VAE (diffusers AutoencoderKL) from {where}: {why}\n"
                "Provide the weights in one of these ways:\n"
                f"  * online: they are downloaded from the Hugging Face hub id '{DEFAULT_SPATIAL_REPO}' "
                "(subfolder 'vae') into the hub cache on first use;\n"
                f"  * offline: on a connected machine run `huggingface-cli download {DEFAULT_SPATIAL_REPO} "
                "--include 'vae/*' --local-dir pretrained_models/sdxl_vae`, copy that folder here and "
                "set model.spatial.from_pretrained='pretrained_models/sdxl_vae' (subfolder 'vae');\n"
                f"  * or start from a full pipeline checkpoint (`--ckpt-path`, e.g. {RELEASED_REPO}), "
                "which already contains the spatial weights."
            ) from err
        return cls(module, micro_batch_size=micro_batch_size, scaling_factor=scaling_factor)

    def get_latent_size(self, input_size):
        return [None if s is None else (s if i == 0 else s // self.downsample)
                for i, s in enumerate(input_size)]

    def _frames(self, x: torch.Tensor):
        b = x.shape[0]
        frames = x.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*T, C, H, W)
        step = self.micro_batch_size or frames.shape[0]
        return b, [frames[i:i + step] for i in range(0, frames.shape[0], step)]

    @staticmethod
    def _video(frames: torch.Tensor, b: int) -> torch.Tensor:
        return frames.unflatten(0, (b, -1)).permute(0, 2, 1, 3, 4)

    def encode(self, x: torch.Tensor, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """`(B, 3, T, H, W)` in [-1, 1] → scaled latents `(B, 4, T, H/8, W/8)`."""
        b, chunks = self._frames(x)
        out = []
        for chunk in chunks:
            dist = self.module.encode(chunk).latent_dist
            latent = dist.sample(generator=generator) if sample else dist.mode()
            out.append(latent * self.scaling_factor)
        return self._video(torch.cat(out), b)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b, chunks = self._frames(z)
        out = [self.module.decode(chunk / self.scaling_factor).sample for chunk in chunks]
        return self._video(torch.cat(out), b)
