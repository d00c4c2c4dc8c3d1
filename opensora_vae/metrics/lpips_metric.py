"""Per-frame LPIPS (AlexNet, v0.1) as in the reference video eval."""

from __future__ import annotations

import os

import torch

from ..lpips import build_lpips
from .protocol import check_frame_batches


class LPIPSMetric(torch.nn.Module):
    """LPIPS distance per frame of [0, 1] frames.

    Like the reference eval, the model runs with ``spatial=True`` (each layer's distance map
    upsampled bilinearly to the frame size, summed) and the value is the mean of that map. This
    differs from lpips's default spatial average of each layer by ~1e-5 relative.
    """

    def __init__(
        self,
        net: str = "alex",
        backbone_path: str | os.PathLike | None = None,
        allow_random_backbone: bool = False,
    ):
        super().__init__()
        self.model = build_lpips(net, backbone_path, allow_random_backbone, spatial=True)

    @torch.no_grad()
    def forward(self, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """real, fake: (N, 3, H, W) in [0, 1]. Returns float32 (N,) on the model's device."""
        check_frame_batches(real, fake)
        out = []
        for r, f in zip(real.split(batch_size), fake.split(batch_size)):
            dist_map = self.model(r * 2 - 1, f * 2 - 1)  # lpips wants [-1, 1]
            out.append(dist_map.mean(dim=(1, 2, 3)))
        if not out:
            return torch.zeros(0, device=real.device)
        return torch.cat(out)
