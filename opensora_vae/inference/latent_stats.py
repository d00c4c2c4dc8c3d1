"""Per-channel statistics of the temporal latents: how the released shift/scale were made."""

from __future__ import annotations

import torch


class LatentStats:
    """Running per-channel count, sum and sum of squares in float64 over every latent value.

    `shift = mean` and `scale = std` (population) normalise the latents to zero mean, unit
    variance per channel; `merge` combines the sums of several processes.
    """

    def __init__(self, channels: int):
        self.count = torch.zeros(channels, dtype=torch.float64)
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.sum_sq = torch.zeros(channels, dtype=torch.float64)

    def update(self, z: torch.Tensor) -> None:
        """z: (B, C, T, H, W) un-normalised latents."""
        if z.ndim < 2 or z.shape[1] != self.sum.numel():
            raise ValueError(f"expected latents with {self.sum.numel()} channels on axis 1, got {tuple(z.shape)}")
        per_channel = z.detach().to(torch.float64).transpose(0, 1).flatten(1).cpu()
        self.count += per_channel.shape[1]
        self.sum += per_channel.sum(dim=1)
        self.sum_sq += per_channel.square().sum(dim=1)

    def merge(self, other: "LatentStats") -> None:
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.count, self.sum, self.sum_sq])

    @classmethod
    def from_tensor(cls, sums: torch.Tensor) -> "LatentStats":
        stats = cls(sums.shape[1])
        stats.count, stats.sum, stats.sum_sq = (t.clone() for t in sums.to(torch.float64).cpu())
        return stats

    @property
    def mean(self) -> torch.Tensor:
        if (self.count == 0).any():
            raise ValueError("no latents were accumulated")
        return self.sum / self.count

    @property
    def std(self) -> torch.Tensor:
        mean = self.mean
        # E[z²] - E[z]² can dip below 0 by rounding when the variance is tiny.
        return (self.sum_sq / self.count - mean.square()).clamp_min(0).sqrt()

    def summary(self) -> dict:
        mean, std = self.mean.tolist(), self.std.tolist()
        return {"count_per_channel": int(self.count[0].item()), "mean": mean, "std": std,
                "shift": mean, "scale": std}
