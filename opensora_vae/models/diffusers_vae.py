"""`AutoencoderKLOpenSora`: the pipeline as a diffusers model, for diffusion codebases that plug in
diffusers' video VAEs (CogVideoX, Mochi, Wan, ...) without glue.

- `from_pretrained` loads a folder it saved itself (`save_pretrained`: diffusers' own
  config.json + diffusion_pytorch_model.safetensors, through diffusers' loading code) and, unchanged,
  the pipeline's own checkpoints: a `save_pretrained` dir or training step dir
  (`step_*/model/`: config.json + model.safetensors) and the released
  `hpcai-tech/OpenSora-VAE-v1.2` (dir or hub id).
- `encode(x).latent_dist` is diffusers' `DiagonalGaussianDistribution` over the un-normalised
  temporal latents (the spatial VAE's mode feeds it); `decode(z).sample` takes un-normalised
  latents, as diffusers VAEs do. `enable_tiling()` / `enable_slicing()` as in diffusers.
- Normalisation as Mochi and Wan expose it: `config.latents_mean` / `config.latents_std` (the
  pipeline's per-channel shift / scale) and `config.scaling_factor = 1.0`, i.e.
  `z_norm = (z - latents_mean) * scaling_factor / latents_std`, which is `VideoVAEPipeline.encode`'s
  normalisation.

The model owns a `VideoVAEPipeline` (`.pipeline`) and computes with it, so its outputs equal the
pipeline's `encode(x, sample=False)` / `decode(z, num_frames)` exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from ..config import model_defaults
from .checkpoint_io import CONFIG_NAME, resolve_pipeline_dir
from .pipeline import SCALE, SHIFT, VideoVAEPipeline

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# The released model's chunk length; its one place is configs/vae/_base_/model_v1_2.py, as SHIFT/SCALE.
MICRO_FRAME_SIZE = model_defaults()["micro_frame_size"]


class AutoencoderKLOpenSora(ModelMixin, ConfigMixin):
    """Open-Sora 1.2's video VAE (spatial SD-VAE + causal temporal VAE) with diffusers' interface.

    Config keys `micro_frame_size`, `shift`, `scale`, `vae_2d`, `vae_temporal` are the pipeline's
    config.json keys (None = the released architecture); `latents_mean`/`latents_std` default to
    shift/scale and must equal them when given.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, micro_frame_size: int | None = MICRO_FRAME_SIZE, shift: Sequence[float] = SHIFT,
                 scale: Sequence[float] = SCALE, vae_2d: dict | None = None, vae_temporal: dict | None = None,
                 latents_mean: Sequence[float] | None = None, latents_std: Sequence[float] | None = None,
                 scaling_factor: float = 1.0):
        super().__init__()
        for name, given, own in (("latents_mean", latents_mean, shift), ("latents_std", latents_std, scale)):
            if given is not None and [float(v) for v in given] != [float(v) for v in own]:
                raise ValueError(f"{name} {list(given)} differs from the pipeline's {list(own)}: they are one value")
        if scaling_factor != 1.0:
            raise ValueError("scaling_factor must be 1.0: latents_std carries the per-channel scale")
        self.register_to_config(latents_mean=[float(v) for v in shift], latents_std=[float(v) for v in scale])
        self.pipeline = VideoVAEPipeline.from_config(
            {"micro_frame_size": micro_frame_size, "shift": list(shift), "scale": list(scale),
             "vae_2d": vae_2d or {}, "vae_temporal": vae_temporal or {}})
        self.use_slicing = False

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pipeline(cls, pipe: VideoVAEPipeline) -> "AutoencoderKLOpenSora":
        """Wraps a pipeline (shares its modules): the config is its config.json's architecture."""
        config = pipe.export_config()
        with torch.device("meta"):  # the placeholder pipeline is replaced at once: allocate nothing
            model = cls(micro_frame_size=config["micro_frame_size"], shift=config["shift"], scale=config["scale"],
                        vae_2d=config["vae_2d"], vae_temporal=config["vae_temporal"])
        model.pipeline = pipe
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "AutoencoderKLOpenSora":
        """A folder this class saved (diffusers' loader, `kwargs` passed on), else a pipeline
        checkpoint: save_pretrained dir, training step dir, released dir or hub id."""
        folder = Path(str(pretrained_model_name_or_path)).expanduser()
        subfolder = kwargs.get("subfolder")
        own = folder / subfolder if subfolder else folder
        if _saved_by_diffusers(own):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        torch_dtype = kwargs.pop("torch_dtype", None)
        kwargs.pop("subfolder", None)
        if kwargs:
            raise TypeError(f"options {sorted(kwargs)} only apply to folders saved by {cls.__name__}.save_pretrained "
                            "(a pipeline checkpoint takes torch_dtype and subfolder)")
        source = own if subfolder and folder.is_dir() else pretrained_model_name_or_path
        model = cls.from_pipeline(VideoVAEPipeline.from_pretrained(resolve_pipeline_dir(source)))
        return model.to(torch_dtype) if torch_dtype is not None else model

    # ------------------------------------------------------------------ diffusers switches
    def enable_tiling(self, **kwargs) -> None:
        """Bounded memory for large frames (`VideoVAEPipeline.enable_tiling`)."""
        self.pipeline.enable_tiling(**kwargs)

    def disable_tiling(self) -> None:
        self.pipeline.disable_tiling()

    def enable_slicing(self) -> None:
        """Encode and decode one batch element at a time."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    # ------------------------------------------------------------------ passes
    def _per_sample(self, fn, x: torch.Tensor) -> torch.Tensor:
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([fn(part) for part in x.split(1)])
        return fn(x)

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        pipe = self.pipeline
        return pipe.encode_temporal(pipe.encode_spatial(x, sample=False)).moments

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x (B, 3, T, H, W) in [-1, 1] -> posterior over un-normalised latents (B, 4, T', H/8, W/8)."""
        posterior = DiagonalGaussianDistribution(self._per_sample(self._moments, x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def frames_for(self, latent_frames: int) -> int:
        """The largest frame count whose latents have `latent_frames` frames (full micro chunks)."""
        # Start above the answer and step down: a latent frame covers `factor` frames (4 in the
        # release; another temporal_downsample changes it), a partial last chunk adds up to one more.
        factor = self.pipeline.temporal_vae.time_downsample_factor
        frames = factor * latent_frames + (self.pipeline.micro_frame_size or 0) + factor
        while frames > 0 and self.pipeline.latent_frames(frames) > latent_frames:
            frames -= 1
        return frames

    def decode(self, z: torch.Tensor, num_frames: int | None = None, return_dict: bool = True):
        """Un-normalised latents -> pixels; `num_frames` defaults to `frames_for(z.shape[2])` (pass 1
        for image latents: causal chunks of 1 to 4 frames share one latent frame)."""
        pipe = self.pipeline
        frames = self.frames_for(z.shape[2]) if num_frames is None else num_frames
        sample = self._per_sample(lambda part: pipe.spatial_vae.decode(pipe.decode_temporal(part, frames)), z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None, return_dict: bool = True):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, num_frames=sample.shape[2], return_dict=return_dict)


def _saved_by_diffusers(folder: Path) -> bool:
    config = folder / CONFIG_NAME
    if not config.is_file() or not any((folder / name).is_file() for name in DIFFUSERS_WEIGHTS):
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == AutoencoderKLOpenSora.__name__
    except (OSError, ValueError):
        return False
