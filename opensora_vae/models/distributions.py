"""Diagonal Gaussian posterior of the temporal VAE (Open-Sora 1.2 semantics)."""

from __future__ import annotations

import torch

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """Posterior `N(mean, exp(logvar))` from moments `(B, 2C, ...)` split on the channel axis.

    `logvar` is clamped to [-30, 20] exactly as the reference does, so `kl()` and `sample()`
    match it bit for bit.
    """

    def __init__(self, moments: torch.Tensor):
        self.moments = moments
        mean, logvar = torch.chunk(moments, 2, dim=1)
        self.mean = mean
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def cat(cls, posteriors: list["DiagonalGaussian"], dim: int = 2) -> "DiagonalGaussian":
        """Joins the posteriors of consecutive micro-frame chunks along time."""
        if len(posteriors) == 1:
            return posteriors[0]
        return cls(torch.cat([p.moments for p in posteriors], dim=dim))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl_elements(self) -> torch.Tensor:
        """KL to the standard normal per element, unsummed: the shape of `mean`."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)

    def kl(self) -> torch.Tensor:
        """KL to the standard normal, summed over all non-batch axes: shape (B,).

        Halving before the sum gives the same bits as halving after: scaling by 0.5 is exact.
        """
        dims = list(range(1, self.mean.ndim))
        return torch.sum(self.kl_elements(), dim=dims)
