"""Latent health (issue 20 part 3): per-channel statistics, KL, active channels, the stage-2
spatial-latent std against step 0 (a checkpointed reference), and the collapse flag."""

from __future__ import annotations

import pytest
import torch

from opensora_vae.models.distributions import DiagonalGaussian
from opensora_vae.models.pipeline import PipelineOutput
from opensora_vae.training.latent_health import ACTIVE_VARIANCE, LatentHealth


class _Pipe:
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0]).view(1, -1, 1, 1, 1)
    scale = torch.tensor([2.0, 1.0, 4.0, 0.5]).view(1, -1, 1, 1, 1)

    def normalize(self, z):
        return (z - self.shift) / self.scale


def _output(mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, x_z: torch.Tensor) -> PipelineOutput:
    return PipelineOutput(x_rec=None, x_z_rec=x_z, z=z, posterior=DiagonalGaussian(torch.cat([mean, logvar], 1)),
                          x_z=x_z)


def _random_output(seed=0, spatial_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(2, 4, 3, 4, 4, generator=g)
    logvar = torch.randn(2, 4, 3, 4, 4, generator=g) * 0.1 - 1
    z = mean + torch.randn(mean.shape, generator=g) * 0.5
    x_z = torch.randn(2, 4, 9, 4, 4, generator=g) * spatial_scale
    return _output(mean, logvar, z, x_z)


def test_per_channel_statistics_kl_and_active_channels():
    pipe, out = _Pipe(), _random_output()
    metrics = LatentHealth(log_every=1, track_spatial=False).measure(pipe, out)
    zn = pipe.normalize(out.z).double()
    mean, logvar = out.posterior.mean.double(), out.posterior.logvar.double()
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar)
    for k in range(4):
        values = zn[:, k].flatten()
        assert metrics[f"latent/mean_c{k}"] == pytest.approx(values.mean().item(), abs=1e-9)
        assert metrics[f"latent/std_c{k}"] == pytest.approx(values.std(unbiased=False).item(), abs=1e-9)
        assert metrics[f"latent/kl_c{k}"] == pytest.approx(kl[:, k].sum().item() / 2, rel=1e-9)
    # The four channel KLs add up to the loss's KL (summed per sample, averaged over samples).
    assert sum(metrics[f"latent/kl_c{k}"] for k in range(4)) == pytest.approx(out.posterior.kl().mean().item(),
                                                                               rel=1e-5)
    assert metrics["latent/active_channels"] == 4 and metrics["latent/collapsed"] == 0
    assert "latent/spatial_std" not in metrics


def test_a_constant_code_is_a_collapse():
    out = _random_output()
    dead = out.posterior.mean.clone()
    dead[:, 1] = 0.3  # channel 1 says the same for every input and position
    metrics = LatentHealth(1, False).measure(_Pipe(), _output(dead, out.posterior.logvar, out.z, out.x_z))
    assert metrics["latent/active_channels"] == 3 and metrics["latent/collapsed"] == 0
    almost = torch.full_like(dead, 0.7) + torch.randn(dead.shape) * (ACTIVE_VARIANCE ** 0.5) * 0.5
    metrics = LatentHealth(1, False).measure(_Pipe(), _output(almost, out.posterior.logvar, out.z, out.x_z))
    assert metrics["latent/active_channels"] == 0 and metrics["latent/collapsed"] == 1


def test_stage2_spatial_latent_collapse_against_step_0():
    health = LatentHealth(log_every=5, track_spatial=True)
    assert health.due(1)  # the reference is taken at the first step, whatever log_every
    first = health.measure(_Pipe(), _random_output(0))
    assert health.spatial_std_ref == pytest.approx(first["latent/spatial_std"])
    assert first["latent/spatial_std_ratio"] == 1
    assert not health.due(2) and health.due(5)
    healthy = health.measure(_Pipe(), _random_output(1, spatial_scale=0.8))
    assert healthy["latent/spatial_std_ratio"] == pytest.approx(0.8, rel=0.1) and healthy["latent/collapsed"] == 0
    shrunk = health.measure(_Pipe(), _random_output(2, spatial_scale=0.02))
    assert shrunk["latent/spatial_std_ratio"] < 0.05 and shrunk["latent/collapsed"] == 1
    # The reference is state: a resumed run compares with the same step-0 value.
    resumed = LatentHealth(5, True)
    resumed.load_state_dict(health.state_dict())
    assert not resumed.due(2)
    again = resumed.measure(_Pipe(), _random_output(2, spatial_scale=0.02))
    assert again["latent/spatial_std_ratio"] == shrunk["latent/spatial_std_ratio"]


def test_trainer_logs_latent_health_and_checkpoints_the_reference(tmp_path):
    from opensora_vae.training import train
    from opensora_vae.training.checkpoint import read_training_state
    from tests.helpers import make_media_csv, tiny_train_cfg

    csv = make_media_csv(tmp_path / "data", num_images=1)
    result = train(tiny_train_cfg(2, tmp_path / "out", csv, max_steps=3, log_every=2, ckpt_every=3))
    history = list(result.history)
    # Step 1 (the step-0 reference) and step 2 (log_every) carry the latent metrics; step 3 not.
    assert ["latent/spatial_std" in h for h in history] == [True, True, False]
    assert history[0]["latent/spatial_std_ratio"] == 1.0
    assert all(h["latent/collapsed"] == 0 and h["latent/active_channels"] >= 1 for h in history[:2])
    assert {f"latent/kl_c{k}" for k in range(4)} <= set(history[1])
    state = read_training_state(tmp_path / "out" / "step_000000003")
    assert state["latent_health"]["spatial_std_ref"] == history[0]["latent/spatial_std"]
