"""Spatial SD-VAE → causal temporal VAE pipeline, with the released checkpoint's layout.

One way to build it for each source: `from_pretrained` (a checkpoint dir or hub id),
`from_config` (a `config.json` dict, random weights) and `from_train_config` (the `model`
section of a training config, optionally with a checkpoint's weights).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from ..config import architecture_problems, model_defaults
from .checkpoint_io import (CheckpointError, load_state_dict_file, load_weights_into,
                            read_pipeline_config, resolve_checkpoint_files, write_pipeline_dir)
from .distributions import DiagonalGaussian
from .spatial import SpatialVAE
from .temporal import TemporalVAE
from .tiling import tiled_spatial_apply

logger = logging.getLogger(__name__)

# Per-channel latent statistics of the released model, used to normalise z for diffusion. Their one
# place is configs/vae/_base_/model_v1_2.py (model.shift, model.scale); these names read it.
SHIFT = tuple(model_defaults()["shift"])
SCALE = tuple(model_defaults()["scale"])

# config.json keys of the temporal VAE's architecture; absent ones take the released model's
# (model_v1_2.py: the reference's VAE_Temporal_SD factory names no sizes).
TEMPORAL_KEYS = ("in_out_channels", "latent_embed_dim", "embed_dim", "filters", "num_res_blocks",
                 "channel_multipliers", "temporal_downsample", "num_groups")
# Runtime settings a caller may override when building from a config.json.
OVERRIDE_KEYS = ("micro_frame_size", "micro_batch_size", "shift", "scale", "freeze_spatial")


@dataclass
class PipelineOutput:
    """What `forward` returns: the training pass on un-normalised latents (diffusers style)."""

    x_rec: torch.Tensor | None  # (B, 3, T, H, W) pixels; None with decode_pixels=False
    x_z_rec: torch.Tensor  # (B, 4, T, h, w) temporal VAE reconstruction of the spatial latents
    z: torch.Tensor  # (B, 4, T', h, w) temporal latents (sampled or mode)
    posterior: DiagonalGaussian  # the temporal posterior z was drawn from
    x_z: torch.Tensor  # (B, 4, T, h, w) spatial latents


# FSDP2 and DDP find the output tensors (to hook their backward) by flattening the output as a
# pytree: registered, the fields are visited like the items of a tuple.
pytree.register_dataclass(PipelineOutput)


@dataclass
class Reconstruction:
    """What `reconstruct` returns; outputs not asked for stay None."""

    rec: torch.Tensor | None = None  # (B, 3, T, H, W) spatial → temporal encode/decode → spatial
    spatial: torch.Tensor | None = None  # (B, 3, T, H, W) spatial encode → spatial decode
    z: torch.Tensor | None = None  # (B, 4, T', h, w) un-normalised temporal latents


class VideoVAEPipeline(nn.Module):
    """`x (B,3,T,H,W) in [-1,1]` → spatial latents `x_z` → temporal latents `z (B,4,T',H/8,W/8)`.

    The temporal VAE sees the clip in independent `micro_frame_size`-frame chunks (17 in the
    release, `None` = whole clip), so latent length is `5*(T//17) + ceil((T%17)/4)`.
    """

    def __init__(self, spatial: SpatialVAE, temporal: TemporalVAE, micro_frame_size: int | None,
                 shift: Sequence[float], scale: Sequence[float], freeze_spatial: bool = False):
        super().__init__()
        self.spatial_vae = spatial
        self.temporal_vae = temporal
        self.micro_frame_size = micro_frame_size
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.temporal_tile: int | None = None  # latent pixels per temporal-VAE tile (None = off)
        self.temporal_tile_overlap = 0
        self.set_freeze_spatial(freeze_spatial)

    def set_freeze_spatial(self, frozen: bool) -> None:
        """A frozen spatial VAE gets no gradients and always runs in eval mode (see `train`)."""
        self.freeze_spatial = bool(frozen)
        self.spatial_vae.requires_grad_(not self.freeze_spatial)
        self.spatial_vae.train(self.training and not self.freeze_spatial)

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
                decode_pixels: bool = True) -> PipelineOutput:
        """Training pass on un-normalised latents.

        `decode_pixels=False` skips the spatial decoder (x_rec is None) for stages whose
        loss lives in latent space.
        """
        x_z = self.encode_spatial(x, sample, generator)
        posterior = self.encode_temporal(x_z)
        z = posterior.sample(generator) if sample else posterior.mode()
        x_z_rec = self.decode_temporal(z, x_z.shape[2])
        x_rec = self.spatial_vae.decode(x_z_rec) if decode_pixels else None
        return PipelineOutput(x_rec=x_rec, x_z_rec=x_z_rec, z=z, posterior=posterior, x_z=x_z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
                    *, rec: bool = True, spatial: bool = False, z: bool = False) -> Reconstruction:
        """The outputs asked for, computed one micro-frame chunk at a time (peak memory is one
        chunk's activations).

        Chunks are independent in the temporal VAE, so `rec` equals `decode(encode(x))` exactly;
        `spatial` (spatial VAE only) comes from the same spatial latents, which halves the
        spatial encoder's cost as the reference's inference did; with `sample=False`, `z` equals
        `denormalize(encode(x, sample=False))`.
        """
        if not (rec or spatial or z):
            raise ValueError("reconstruct: ask for at least one of rec, spatial, z")
        out = Reconstruction(rec=torch.empty_like(x) if rec else None,
                             spatial=torch.empty_like(x) if spatial else None)
        latents = []
        for s, e in self.frame_chunks(x.shape[2]):
            x_z = self.spatial_vae.encode(x[:, :, s:e], sample=sample, generator=generator)
            if spatial:
                out.spatial[:, :, s:e] = self.spatial_vae.decode(x_z).to(x.dtype)
            if rec or z:
                posterior = self.encode_temporal(x_z)
                chunk_z = posterior.sample(generator) if sample else posterior.mode()
                latents.append(chunk_z)
                if rec:
                    out.rec[:, :, s:e] = self.spatial_vae.decode(self.decode_temporal(chunk_z, e - s)).to(x.dtype)
        if z:
            out.z = torch.cat(latents, dim=2)
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
    def from_pretrained(cls, path_or_repo: str | Path, **overrides) -> "VideoVAEPipeline":
        """Loads our `save_pretrained` dirs (or a training step dir) and the released HF
        checkpoint (dir or hub id, `config.released_checkpoint()`); architecture and weights both
        come from the checkpoint.

        `overrides` replace runtime settings: micro_frame_size, micro_batch_size, shift, scale,
        freeze_spatial.
        """
        config_path, weights_path = resolve_checkpoint_files(path_or_repo)
        config = read_pipeline_config(config_path)
        _check_overrides(overrides)  # a caller's mistake, not the checkpoint's
        # Built on `meta`, then the weights are assigned: no time spent on random init of 393 M params.
        try:
            pipe = cls.from_config(config, device="meta", **overrides)
        except (TypeError, ValueError, KeyError, AttributeError) as err:  # values of the wrong type or range
            raise CheckpointError(f"'{config_path}' does not describe a pipeline this code can build "
                                  f"({type(err).__name__}: {err})") from err
        load_weights_into(pipe, load_state_dict_file(weights_path), str(path_or_repo), assign=True)
        return pipe

    @classmethod
    def from_config(cls, config: dict, device: str | torch.device | None = None,
                    **overrides) -> "VideoVAEPipeline":
        """Random weights (or `meta` tensors) from a config.json dict, the released one or ours
        (`export_config`); keys it lacks take the released model's (`config.model_defaults()`)."""
        _check_overrides(overrides)
        released = model_defaults()
        spatial_cfg = config.get("vae_2d", {}) or {}
        spatial_kwargs = {k: spatial_cfg.get(k, released["spatial"][k]) for k in ("micro_batch_size", "scaling_factor")}
        if "micro_batch_size" in overrides:
            spatial_kwargs["micro_batch_size"] = overrides.pop("micro_batch_size")
        settings = {k: config[k] if config.get(k) is not None else released[k] for k in ("shift", "scale")}
        # A config.json without micro_frame_size is the released one's; None = the whole clip.
        settings["micro_frame_size"] = config.get("micro_frame_size", released["micro_frame_size"])
        settings.update({k: v for k, v in overrides.items() if v is not None or k == "micro_frame_size"})
        temporal_kwargs = {**released["temporal"], **_temporal_kwargs(config.get("vae_temporal", {}) or {})}
        architecture = _spatial_architecture(spatial_cfg)
        problems = architecture_problems(temporal_kwargs, architecture, {**settings, **spatial_kwargs},
                                         names=("vae_temporal.", "vae_2d.config.", ""))
        if problems:  # before anything is built: no ZeroDivisionError or huge allocation from a bad file
            raise ValueError("; ".join(problems))
        with torch.device(device) if device is not None else contextlib.nullcontext():
            spatial = SpatialVAE.from_config(architecture, **spatial_kwargs)
            temporal = TemporalVAE(**temporal_kwargs)
            return cls(spatial, temporal, **settings)

    @classmethod
    def from_train_config(cls, model_cfg: dict, ckpt_path: str | Path | None = None) -> "VideoVAEPipeline":
        """From the `model = dict(...)` section of a training config; weights from `ckpt_path`
        (or `model.from_pretrained`).

        The architecture always comes from the config. With a pipeline checkpoint the spatial VAE
        is built from its config without downloading its separate weights (the checkpoint holds
        them). Without one, the spatial VAE comes from `model.spatial.from_pretrained` (hub id or
        local dir) or, if that is None, random weights with `model.spatial.config` (tiny
        test/demo models).
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
        # A hand-made section may name only some sizes: the others are the released model's.
        temporal = TemporalVAE(**{**model_defaults()["temporal"], **dict(model_cfg["temporal"])})
        pipe = cls(spatial, temporal, micro_frame_size=model_cfg["micro_frame_size"],
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


def _check_overrides(overrides: dict) -> None:
    unknown = set(overrides) - set(OVERRIDE_KEYS)
    if unknown:
        raise TypeError(f"unknown pipeline overrides: {sorted(unknown)}")


def _spatial_architecture(cfg: dict) -> dict | None:
    """The AutoencoderKL config of a config.json's `vae_2d`; None = the SDXL VAE (released)."""
    kind = cfg.get("type", "VideoAutoencoderKL")
    if kind != "VideoAutoencoderKL":
        raise CheckpointError(f"unsupported spatial VAE type '{kind}' in config.json")
    return cfg.get("config") or None


def _temporal_kwargs(cfg: dict) -> dict:
    kind = cfg.get("type", "VAE_Temporal_SD")
    if kind not in ("VAE_Temporal_SD", "VAE_Temporal"):
        raise CheckpointError(f"unsupported temporal VAE type '{kind}' in config.json "
                              "(expected VAE_Temporal_SD or VAE_Temporal)")
    return {k: cfg[k] for k in TEMPORAL_KEYS if k in cfg}
