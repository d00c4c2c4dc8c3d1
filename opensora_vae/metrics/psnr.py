"""Per-frame PSNR of [0, 1] frames."""

from __future__ import annotations

import torch

from .protocol import check_frame_batches

# The reference caps identical frames at 100 dB instead of returning infinity.
PSNR_CAP = 100.0
MSE_FLOOR = 1e-10


def psnr(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``20·log10(1/sqrt(mse))`` per frame, mse over C·H·W, 100 where mse < 1e-10.

    real, fake: (N, C, H, W) in [0, 1] on any device. Returns float64 (N,) on that device.
    The mean is taken in float64 (the reference used float32 numpy; the difference is
    rounding only).
    """
    check_frame_batches(real, fake)
    diff = real.to(torch.float64) - fake.to(torch.float64)
    mse = diff.square().flatten(1).mean(dim=1)
    value = 20.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR).sqrt())
    return torch.where(mse < MSE_FLOOR, torch.full_like(value, PSNR_CAP), value)

