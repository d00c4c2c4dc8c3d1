"""LPIPS per frame: batched values equal lpips called frame by frame."""

import pytest
import torch

from opensora_vae.lpips import build_lpips, find_backbone
from opensora_vae.metrics import LPIPSMetric


def _frames(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(5, 3, 64, 80, generator=g)


def test_batched_equals_lpips_frame_by_frame():
    torch.manual_seed(0)
    metric = LPIPSMetric(allow_random_backbone=find_backbone("alex") is None)
    real, fake = _frames(0), (_frames(0) * 0.8 + _frames(1) * 0.2)
    values = metric(real, fake, batch_size=2)
    # The reference: lpips.LPIPS(net="alex", spatial=True) on [-1, 1], batch 1, .mean().
    direct = [metric.model(r[None] * 2 - 1, f[None] * 2 - 1).mean().item() for r, f in zip(real, fake)]
    assert values.shape == (5,)
    assert values.tolist() == pytest.approx(direct, rel=1e-5, abs=1e-7)
    assert (values > 0).all()
    assert torch.equal(metric(real, real), torch.zeros(5))


def test_spatial_mean_close_to_lpips_default():
    if find_backbone("alex") is None:
        pytest.skip("AlexNet backbone absent: run `python tools/install_lpips_backbones.py`")
    metric = LPIPSMetric()
    plain = build_lpips("alex")
    real, fake = _frames(0), _frames(1)
    ours = metric(real, fake)
    theirs = plain(real * 2 - 1, fake * 2 - 1).flatten()
    # Upsampling each layer's map before averaging moves the value only slightly.
    torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=0)
    assert not torch.equal(ours, theirs)
