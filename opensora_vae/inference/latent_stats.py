"""Per-channel statistics of the temporal latents: how the released shift/scale were made (the
quantity `cal_stats` reports: population mean and std of every latent value of a channel).

One class for inference's `cal_stats` and the latent export. It keeps (count, mean, M2) in float64
and merges parts with Chan et al.'s parallel Welford update, so merging shards or ranks is exact
up to rounding whatever their sizes, and the `E[z²] - E[z]²` cancellation of sums of squares
cannot occur.
"""

from __future__ import annotations

import torch


class LatentStats:
    """Per-channel count, mean and M2 (sum of squared deviations) in float64."""

    def __init__(self, channels: int):
        self.count = torch.zeros(channels, dtype=torch.float64)
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)

    def update(self, z: torch.Tensor, channel_dim: int = 1) -> None:
        """Adds every value of `z`, channels on `channel_dim` (1: a (B, C, T, H, W) batch of
        un-normalised latents; 0: one (C, T, H, W) latent)."""
        if z.ndim <= channel_dim or z.shape[channel_dim] != self.mean.numel():
            raise ValueError(f"expected latents with {self.mean.numel()} channels on axis {channel_dim}, "
                             f"got {tuple(z.shape)}")
        values = z.detach().to(torch.float64).movedim(channel_dim, 0).flatten(1).cpu()
        part = LatentStats(values.shape[0])
        part.count.fill_(values.shape[1])
        part.mean = values.mean(dim=1)
        part.m2 = (values - part.mean[:, None]).square().sum(dim=1)
        self.merge(part)

    def merge(self, other: "LatentStats") -> None:
        """Chan's pairwise update: the moments of the union of both parts."""
        total = self.count + other.count
        if not bool((total > 0).all()):
            return  # both empty
        delta = other.mean - self.mean
        weight = other.count / total
        self.m2 = self.m2 + other.m2 + delta.square() * self.count * weight
        self.mean = self.mean + delta * weight
        self.count = total

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation (what normalises the latents to unit variance)."""
        return (self.m2 / self.count.clamp_min(1)).sqrt()

    def to_dict(self) -> dict:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "LatentStats":
        out = cls(len(data["mean"]))
        out.count, out.mean, out.m2 = (torch.tensor(data[k], dtype=torch.float64) for k in ("count", "mean", "m2"))
        return out

    @classmethod
    def merged(cls, parts: list["LatentStats"], channels: int) -> "LatentStats":
        out = cls(channels)
        for part in parts:
            out.merge(part)
        return out

    def summary(self) -> dict:
        if (self.count == 0).any():
            raise ValueError("no latents were accumulated")
        mean, std = self.mean.tolist(), self.std.tolist()
        return {"count_per_channel": int(self.count[0].item()), "mean": mean, "std": std,
                "shift": mean, "scale": std}


def shift_scale_text(mean: list[float], std: list[float]) -> str:
    """The statistics as the model config writes them (configs/vae/_base_/model_v1_2.py)."""
    def fmt(values):
        return "(" + ", ".join(f"{v:.6f}" for v in values) + ")"
    return f"shift={fmt(mean)},\nscale={fmt(std)},"
