"""Pixels -> posterior moments, and the QA decode, one micro-frame chunk at a time.

The temporal VAE sees independent `micro_frame_size`-frame chunks (`VideoVAEPipeline.frame_chunks`),
so a whole video is encoded chunk by chunk exactly as `reconstruct` does (its `z` is our mean),
with one chunk's activations in memory whatever the video's length. The pixels `x` may stay on the
CPU: each chunk is moved to the pipeline's device as it is used, so device memory holds one chunk's
pixels, not the whole video's.
"""

from __future__ import annotations

import torch

from ..metrics.psnr import psnr
from ..models import VideoVAEPipeline


@torch.no_grad()
def encode_moments(pipe: VideoVAEPipeline, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of the temporal posterior, each (B, C, T', h, w) on the pipeline's device;
    the spatial VAE's mode."""
    device = pipe.shift.device
    means, logvars = [], []
    for s, e in pipe.frame_chunks(x.shape[2]):
        posterior = pipe.encode_temporal(pipe.encode_spatial(x[:, :, s:e].to(device), sample=False))
        means.append(posterior.mean)
        logvars.append(posterior.logvar)
    return torch.cat(means, dim=2), torch.cat(logvars, dim=2)


@torch.no_grad()
def decode_psnr(pipe: VideoVAEPipeline, z: torch.Tensor, x: torch.Tensor) -> float:
    """Mean per-frame PSNR of `x` (1, 3, T, H, W) in [-1, 1] against the decode of its stored
    un-normalised latents `z` (1, C, T', h, w), chunk by chunk (`x` may be on the CPU: one chunk
    at a time goes to the pipeline's device)."""
    device = pipe.shift.device
    values, zs = [], 0
    for s, e in pipe.frame_chunks(x.shape[2]):
        n = pipe.latent_frames(e - s)
        rec = pipe.spatial_vae.decode(pipe.decode_temporal(z[:, :, zs:zs + n].to(device, x.dtype), e - s))
        zs += n
        frames = lambda v: ((v[0].transpose(0, 1).float() + 1) / 2).clamp(0, 1)  # noqa: E731
        values.append(psnr(frames(x[:, :, s:e].to(device)), frames(rec)))
    return float(torch.cat(values).mean())
