"""Latent health, logged every `log_every` steps from the training forward (no extra pass).

- `latent/mean_c{k}`, `latent/std_c{k}`: per channel, the normalised latents `(z - shift) / scale`
  that a diffusion model will see (the step's z, as the loss saw it); healthy values stay near
  0 and 1, and drift away as the encoder moves from the released statistics.
- `latent/kl_c{k}`: per channel, the KL of the temporal posterior to N(0, I) summed over
  T', h, w, averaged over samples (the loss's KL split by channel).
- `latent/active_channels`: channels whose posterior mean varies over the batch and positions,
  Var(E[z|x]) > `ACTIVE_VARIANCE` (Burda et al. 2016's activity): a channel that says the same
  for every input carries no information.
- With a trainable spatial VAE (stages 2 and 3): `latent/spatial_std`, the std of the spatial
  latents x_z, and `latent/spatial_std_ratio`, that std over its value at step 0 (the first
  forward of the run, before any update; the reference lives in the checkpoint, so a resumed run
  keeps comparing with the same value). In stage 2 the loss compares the temporal VAE's output
  with x_z, so shrinking x_z towards a constant lowers the loss without learning anything
  (Open-Sora issue #700); the ratio shows it long before reconstructions turn grey.
- `latent/collapsed`: 1 when no channel is active or the ratio fell below `COLLAPSE_RATIO`,
  with a warning in the log that says what to do.

Every value is a sum over ranks (one all-reduce), so all ranks log and decide the same.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch

from ..distributed import all_reduce_sum
from ..models.distributions import DiagonalGaussian

logger = logging.getLogger("opensora_vae.training")

ACTIVE_VARIANCE = 0.01  # Burda et al. 2016: a latent unit with Var_x(E[z|x]) above this is active
COLLAPSE_RATIO = 0.1  # x_z's std under 10% of its step-0 value: the spatial latents collapsed


class LatentHealth:
    """`measure(pipe, out)` on every rank at the same steps (`due`); state: the step-0 x_z std."""

    def __init__(self, log_every: int, track_spatial: bool):
        self.log_every = max(1, int(log_every))
        self.track_spatial = bool(track_spatial)
        self.spatial_std_ref: float | None = None
        self.warned = False

    def state_dict(self) -> dict[str, Any]:
        return {"spatial_std_ref": self.spatial_std_ref}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.spatial_std_ref = state["spatial_std_ref"]

    def due(self, step: int) -> bool:
        """Every `log_every` steps, and at the run's first step while the step-0 reference is unset."""
        return step % self.log_every == 0 or (self.track_spatial and self.spatial_std_ref is None)

    @torch.no_grad()
    def measure(self, pipe: Any, out: Any, step: int | None = None) -> dict[str, float]:
        """Metrics of one training forward (`PipelineOutput`) of `pipe` (for shift/scale)."""
        z = pipe.normalize(out.z.detach().float())
        channels = z.shape[1]
        # In double: the per-channel sums run over every position, where float32 would drift.
        posterior = DiagonalGaussian(out.posterior.moments.detach().double())
        per_channel = lambda t: t.transpose(0, 1).flatten(1).double()  # noqa: E731  (C, B*T*h*w)
        zc, mc = per_channel(z), per_channel(posterior.mean)
        kl = posterior.kl_elements()
        parts = [torch.tensor([float(z.shape[0]), float(zc.shape[1])], dtype=torch.float64, device=z.device),
                 zc.sum(1), zc.square().sum(1), mc.sum(1), mc.square().sum(1), per_channel(kl).sum(1)]
        if self.track_spatial:
            x_z = out.x_z.detach().double()
            parts.append(torch.stack([x_z.sum(), x_z.square().sum(), torch.tensor(float(x_z.numel()),
                                                                                    dtype=torch.float64,
                                                                                    device=x_z.device)]))
        sums = all_reduce_sum(torch.cat(parts)).cpu()
        samples, count = sums[0].item(), sums[1].item()
        z_sum, z_sq, m_sum, m_sq, kl_sum = sums[2:2 + 5 * channels].view(5, channels)
        z_mean = z_sum / count
        z_std = (z_sq / count - z_mean.square()).clamp_min(0).sqrt()
        m_var = (m_sq / count - (m_sum / count).square()).clamp_min(0)
        active = int((m_var > ACTIVE_VARIANCE).sum())
        metrics: dict[str, float] = {}
        for k in range(channels):
            metrics[f"latent/mean_c{k}"] = float(z_mean[k])
            metrics[f"latent/std_c{k}"] = float(z_std[k])
            metrics[f"latent/kl_c{k}"] = float(kl_sum[k] / samples)
        metrics["latent/active_channels"] = float(active)
        collapsed = active == 0
        if self.track_spatial:
            s, sq, n = sums[2 + 5 * channels:].tolist()
            spatial_std = math.sqrt(max(sq / n - (s / n) ** 2, 0.0))
            if self.spatial_std_ref is None:
                self.spatial_std_ref = spatial_std
            ratio = spatial_std / self.spatial_std_ref if self.spatial_std_ref > 0 else float("nan")
            metrics["latent/spatial_std"] = spatial_std
            metrics["latent/spatial_std_ratio"] = ratio
            collapsed = collapsed or ratio < COLLAPSE_RATIO
        metrics["latent/collapsed"] = float(collapsed)
        if collapsed and not self.warned:
            self.warned = True  # once per run: the scalar keeps showing it at every log step
            logger.warning(
                "LATENT COLLAPSE at step %s: %d of %d latent channels active%s. The autoencoder is "
                "learning a constant code (Open-Sora issue #700): reconstructions will lose all detail. "
                "Stop and resume from an earlier checkpoint with detach_z_target=True (the default), a "
                "lower lr, or use_real_rec_loss=True so pixels anchor the latents.",
                step if step is not None else "?", active, channels,
                f", spatial latents' std at {metrics['latent/spatial_std_ratio']:.3g} x its step-0 value"
                if self.track_spatial else "")
        return metrics
