"""Full-pipeline and spatial-only reconstructions of a clip, and their conversion to frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..metrics.psnr import psnr
from ..metrics.ssim import ssim
from ..models import VideoVAEPipeline


@dataclass
class Reconstruction:
    rec: torch.Tensor  # (B, 3, T, H, W): spatial encode → temporal encode/decode → spatial decode
    spatial: torch.Tensor  # (B, 3, T, H, W): spatial encode → spatial decode
    z: torch.Tensor  # (B, 4, T', h, w): un-normalised temporal latents


@torch.no_grad()
def reconstruct_clip(pipe: VideoVAEPipeline, x: torch.Tensor, sample: bool = False,
                     generator: torch.Generator | None = None) -> Reconstruction:
    """Both reconstructions from one spatial encoding per micro-frame chunk.

    Sharing the spatial latents halves the spatial encoder's cost (as the reference's inference
    did); chunk by chunk keeps peak memory at one chunk's activations. With `sample=False` the
    results equal `pipe.reconstruct(x)`, `pipe.reconstruct(x, spatial_only=True)` and
    `pipe.denormalize(pipe.encode(x, sample=False))`.
    """
    rec, spatial, zs = torch.empty_like(x), torch.empty_like(x), []
    for chunk in pipe.reconstruct_chunks(x, sample=sample, generator=generator, full=True, spatial=True):
        rec[:, :, chunk.start:chunk.end] = chunk.rec.to(x.dtype)
        spatial[:, :, chunk.start:chunk.end] = chunk.spatial.to(x.dtype)
        zs.append(chunk.z.float())
    return Reconstruction(rec=rec, spatial=spatial, z=torch.cat(zs, dim=2))


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] → uint8 (T, H, W, 3), rounding as the reference's `save_sample`
    (`(x + 1) / 2`, clamp to [0, 1], `* 255 + 0.5`, truncate)."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) video, got {tuple(video.shape)}")
    x = video.detach().float().add(1).div(2).clamp(0, 1).mul(255).add(0.5).clamp(0, 255)
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def frame_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, list[float]]:
    """Per-frame PSNR and SSIM (eval protocol) of uint8 (T, H, W, 3) frames."""
    def as_unit(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float64) / 255.0

    a, b = as_unit(real), as_unit(fake)
    return {"psnr": psnr(a, b).tolist(), "ssim": ssim(a, b).tolist()}
