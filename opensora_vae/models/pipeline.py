"""Spatial SD-VAE → causal temporal VAE pipeline, with the released checkpoint's layout."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from .checkpoint_io import write_pipeline_dir
from .distributions import DiagonalGaussian
from .spatial import SpatialVAE
from .temporal import TemporalVAE
from .tiling import tiled_spatial_apply

# Per-channel latent statistics of the released model, used to normalise z for diffusion.
SHIFT = (-0.10, 0.34, 0.27, 0.98)
SCALE = (3.85, 2.32, 2.33, 3.06)
RELEASED_REPO = "hpcai-tech/OpenSora-VAE-v1.2"


@dataclass
class ChunkReconstruction:
    """Reconstructions of frames `[start, end)`; fields not asked for stay None."""

    start: int
    end: int
    rec: torch.Tensor | None = None  # full pipeline
    spatial: torch.Tensor | None = None  # spatial VAE only
    z: torch.Tensor | None = None  # un-normalised temporal latents


class VideoVAEPipeline(nn.Module):
    """`x (B,3,T,H,W) in [-1,1]` → spatial latents `x_z` → temporal latents `z (B,4,T',H/8,W/8)`.

    The temporal VAE sees the clip in independent `micro_frame_size`-frame chunks (17 in the
    release, `None` = whole clip), so latent length is `5*(T//17) + ceil((T%17)/4)`.
    """

    def __init__(self, spatial: SpatialVAE, temporal: TemporalVAE, micro_frame_size: int | None = 17,
                 shift: Sequence[float] = SHIFT, scale: Sequence[float] = SCALE,
                 freeze_spatial: bool = False):
        super().__init__()
        self.spatial_vae = spatial
        self.temporal_vae = temporal
        self.micro_frame_size = micro_frame_size
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.freeze_spatial = freeze_spatial
        self.temporal_tile: int | None = None  # latent pixels per temporal-VAE tile (None = off)
        self.temporal_tile_overlap = 0
        if freeze_spatial:
            self.spatial_vae.requires_grad_(False)
            self.spatial_vae.eval()

    # ------------------------------------------------------------------ sizes and chunks
    @property
    def micro_z_frame_size(self) -> int | None:
        if self.micro_frame_size is None:
            return None
        return self.temporal_vae.get_latent_size([self.micro_frame_size, None, None])[0]

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        t, h, w = self.spatial_vae.get_latent_size(list(input_size))
        return [self.latent_frames(t), h, w]

    def latent_frames(self, num_frames: int | None) -> int | None:
        if num_frames is None:
            return None
        tvae = self.temporal_vae
        if self.micro_frame_size is None:
            return tvae.get_latent_size([num_frames, None, None])[0]
        full, rest = divmod(num_frames, self.micro_frame_size)
        return full * self.micro_z_frame_size + (tvae.get_latent_size([rest, None, None])[0] if rest else 0)

    def frame_chunks(self, num_frames: int) -> list[tuple[int, int]]:
        """`[start, end)` frame ranges the temporal VAE processes independently."""
        step = self.micro_frame_size or num_frames
        return [(s, min(s + step, num_frames)) for s in range(0, num_frames, step)]

    def _latent_chunks(self, num_frames: int) -> list[tuple[int, int, int]]:
        """(latent start, latent end, frames) per chunk, matching `frame_chunks`."""
        out, zs = [], 0
        for s, e in self.frame_chunks(num_frames):
            n = self.temporal_vae.get_latent_size([e - s, None, None])[0]
            out.append((zs, zs + n, e - s))
            zs += n
        return out

    # ------------------------------------------------------------------ tiling
    def enable_tiling(self, temporal_tile: int = 32, temporal_overlap: int = 8,
                      spatial: bool = True) -> None:
        """Bounded memory for large frames (e.g. 1080p).

        The spatial VAE uses diffusers' own `enable_tiling()`; the temporal VAE runs on
        `temporal_tile`² latent tiles (256² pixels for 32) blended over `temporal_overlap`.
        """
        if spatial:
            self.spatial_vae.module.enable_tiling()
        self.temporal_tile, self.temporal_tile_overlap = temporal_tile, temporal_overlap

    def disable_tiling(self) -> None:
        self.spatial_vae.module.disable_tiling()
        self.temporal_tile, self.temporal_tile_overlap = None, 0

    def _temporal_encode(self, x_z: torch.Tensor) -> DiagonalGaussian:
        if self.temporal_tile is None:
            return self.temporal_vae.encode(x_z)
        moments = tiled_spatial_apply(lambda t: self.temporal_vae.encode(t).moments, x_z,
                                      self.temporal_tile, self.temporal_tile_overlap)
        return DiagonalGaussian(moments)

    def _temporal_decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.temporal_tile is None:
            return self.temporal_vae.decode(z, num_frames)
        return tiled_spatial_apply(lambda t: self.temporal_vae.decode(t, num_frames), z,
                                   self.temporal_tile, self.temporal_tile_overlap)

    # ------------------------------------------------------------------ core passes
    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_spatial:
            self.spatial_vae.eval()  # a frozen spatial VAE never trains (no dropout/norm drift)
        return self

    def _spatial_grad(self):
        return torch.no_grad() if self.freeze_spatial else contextlib.nullcontext()

    def encode_spatial(self, x: torch.Tensor, sample: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        with self._spatial_grad():
            return self.spatial_vae.encode(x, sample=sample, generator=generator)

    def encode_temporal(self, x_z: torch.Tensor) -> DiagonalGaussian:
        """Posterior over the whole clip (chunk posteriors joined in time)."""
        return DiagonalGaussian.cat(
            [self._temporal_encode(x_z[:, :, s:e]) for s, e in self.frame_chunks(x_z.shape[2])])

    def decode_temporal(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        chunks = self._latent_chunks(num_frames)
        if chunks[-1][1] != z.shape[2]:
            raise ValueError(f"{num_frames} frames need {chunks[-1][1]} latent frames "
                             f"(micro_frame_size={self.micro_frame_size}), got {z.shape[2]}")
        return torch.cat([self._temporal_decode(z[:, :, zs:ze], n) for zs, ze, n in chunks], dim=2)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale.to(z.dtype) + self.shift.to(z.dtype)

    def encode(self, x: torch.Tensor, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels → normalised latents for diffusion. `sample=False` is deterministic."""
        posterior = self.encode_temporal(self.encode_spatial(x, sample, generator))
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.normalize(z)

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Normalised latents → pixels in about [-1, 1]."""
        return self.spatial_vae.decode(self.decode_temporal(self.denormalize(z), num_frames))

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
                decode_pixels: bool = True):
        """Training pass on un-normalised latents: `(x_rec, x_z_rec, z, posterior, x_z)`.

        `decode_pixels=False` skips the spatial decoder (x_rec is None) for stages whose
        loss lives in latent space.
        """
        x_z = self.encode_spatial(x, sample, generator)
        posterior = self.encode_temporal(x_z)
        z = posterior.sample(generator) if sample else posterior.mode()
        x_z_rec = self.decode_temporal(z, x_z.shape[2])
        x_rec = self.spatial_vae.decode(x_z_rec) if decode_pixels else None
        return x_rec, x_z_rec, z, posterior, x_z

    @torch.no_grad()
    def reconstruct_chunks(self, x: torch.Tensor, sample: bool = False,
                           generator: torch.Generator | None = None, full: bool = True,
                           spatial: bool = False) -> Iterator[ChunkReconstruction]:
        """Reconstructs one micro-frame chunk at a time, so peak memory is one chunk's.

        Chunks are independent in the temporal VAE, so `full` equals `decode(encode(x))`
        exactly; `spatial` adds the spatial-only reconstruction from the same spatial latents.
        """
        for s, e in self.frame_chunks(x.shape[2]):
            x_z = self.spatial_vae.encode(x[:, :, s:e], sample=sample, generator=generator)
            chunk = ChunkReconstruction(s, e)
            if spatial:
                chunk.spatial = self.spatial_vae.decode(x_z)
            if full:
                posterior = self.encode_temporal(x_z)
                chunk.z = posterior.sample(generator) if sample else posterior.mode()
                chunk.rec = self.spatial_vae.decode(self.decode_temporal(chunk.z, e - s))
            yield chunk

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample: bool = False, spatial_only: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        out = torch.empty_like(x)
        for c in self.reconstruct_chunks(x, sample, generator, full=not spatial_only, spatial=spatial_only):
            out[:, :, c.start:c.end] = (c.spatial if spatial_only else c.rec).to(out.dtype)
        return out

    # ------------------------------------------------------------------ checkpoint format
    def export_config(self) -> dict:
        """config.json: the reference's keys, plus the explicit architecture so any size reloads."""
        spatial_cfg = {k: v for k, v in dict(self.spatial_vae.module.config).items()
                       if not k.startswith("_") or k == "_class_name"}
        return {
            "architectures": ["VideoAutoencoderPipeline"],
            "model_type": "VideoAutoencoderPipeline",
            "micro_frame_size": self.micro_frame_size,
            "shift": self.shift.flatten().tolist(),
            "scale": self.scale.flatten().tolist(),
            "freeze_vae_2d": False,
            "cal_loss": False,
            "vae_2d": {
                "type": "VideoAutoencoderKL",
                "micro_batch_size": self.spatial_vae.micro_batch_size,
                "scaling_factor": self.spatial_vae.scaling_factor,
                "config": spatial_cfg,
            },
            "vae_temporal": {"type": "VAE_Temporal", **self.temporal_vae.config},
            "format": "opensora_vae",
        }

    def save_pretrained(self, save_dir: str | Path) -> None:
        write_pipeline_dir(save_dir, self.export_config(), self.state_dict())

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path = RELEASED_REPO, **overrides) -> "VideoVAEPipeline":
        """Loads our `save_pretrained` dirs and the released HF checkpoint (dir or hub id).

        `overrides` replace runtime settings: micro_frame_size, micro_batch_size, freeze_spatial.
        """
        from .checkpoint_io import load_pipeline

        return load_pipeline(cls, path_or_repo, **overrides)

    @classmethod
    def from_config_dict(cls, config: dict, device: str | torch.device | None = None,
                         **overrides) -> "VideoVAEPipeline":
        """Builds (random weights) from a config.json dict, reference or ours."""
        from .checkpoint_io import pipeline_from_config

        return pipeline_from_config(cls, config, device=device, **overrides)
