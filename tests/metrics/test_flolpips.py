"""PWC-Net (correlation, structure, weight loading) and FloLPIPS."""

import pytest
import torch

from opensora_vae.lpips import build_lpips
from opensora_vae.metrics import FloLPIPS, PWCNet, build_pwcnet, correlation, flow_weighted_average
from opensora_vae.metrics.pwcnet import PWC_WEIGHTS_ENV, backwarp


def _naive_correlation(first, second, d):
    n, c, h, w = first.shape
    out = torch.zeros(n, (2 * d + 1) ** 2, h, w, dtype=first.dtype)
    for b in range(n):
        for dy in range(-d, d + 1):
            for dx in range(-d, d + 1):
                k = (dy + d) * (2 * d + 1) + (dx + d)
                for y in range(h):
                    for x in range(w):
                        if 0 <= y + dy < h and 0 <= x + dx < w:
                            out[b, k, y, x] = (first[b, :, y, x] * second[b, :, y + dy, x + dx]).sum() / c
    return out


def test_correlation_equals_naive_loop():
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 3, 5, 7, generator=g), torch.randn(2, 3, 5, 7, generator=g)
    ours = correlation(first.double(), second.double())
    assert ours.shape == (2, 81, 5, 7)
    torch.testing.assert_close(ours, _naive_correlation(first.double(), second.double(), 4), rtol=0, atol=1e-12)
    # Displacement (dy, dx) = (0, 0) is channel 40: the mean over channels of first * second.
    torch.testing.assert_close(ours[:, 40], (first * second).double().mean(1))


def test_backwarp_with_zero_flow_is_identity():
    image = torch.rand(2, 3, 8, 12)
    out = backwarp(image, torch.zeros(2, 2, 8, 12))
    torch.testing.assert_close(out, image, rtol=0, atol=1e-6)


def test_pwcnet_structure_and_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_pwcnet(allow_random=True)
    keys = set(net.state_dict())
    assert len(keys) == 126
    assert sum(p.numel() for p in net.parameters()) == 9_374_274
    for key in ["netExtractor.netSix.4.weight", "netTwo.netUpfeat.weight", "netFiv.netUpflow.bias",
                "netSix.netSix.0.weight", "netRefiner.netMain.12.bias"]:
        assert key in keys
    assert "netSix.netUpflow.weight" not in keys  # the top level has no previous estimate
    assert net.netRefiner.netMain[0].in_channels == 81 + 32 + 2 + 2 + 128 + 128 + 96 + 64 + 32
    assert net.netFiv.netUpfeat.in_channels == 81 + 128 + 128 + 96 + 64 + 32
    # Files of the original release name modules "module*": both spellings load strictly.
    legacy = {k.replace("net", "module"): v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / "network-default.pytorch"
    torch.save(legacy, path)
    loaded = build_pwcnet(path)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_pwcnet_runs_on_odd_sizes():
    torch.manual_seed(0)
    net = PWCNet().eval()
    a, b = torch.rand(2, 3, 50, 70), torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        flow = net(a, b)
    assert flow.shape == (2, 2, 50, 70) and torch.isfinite(flow).all()
    assert flow.abs().mean() > 0
    with torch.no_grad():  # batching does not change a sample's flow
        torch.testing.assert_close(net(a[:1], b[:1]), flow[:1], rtol=1e-4, atol=1e-4)


def test_missing_pwc_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv(PWC_WEIGHTS_ENV, str(tmp_path / "nope.pytorch"))
    with pytest.raises(FileNotFoundError, match="network-default.pytorch"):
        build_pwcnet()


def test_flow_weighted_average_weights_and_zero_flow():
    dist = torch.arange(16.0).view(1, 1, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    assert flow_weighted_average(dist, flow).item() == pytest.approx(dist.mean().item())  # uniform
    flow[0, :, 2, 3] = torch.tensor([3.0, 4.0])  # all weight on pixel (2, 3)
    assert flow_weighted_average(dist, flow).item() == pytest.approx(dist[0, 0, 2, 3].item())
    flow[0, 0, 0, 0] = 15.0  # |d| = 15 vs 5: weights 3/4 and 1/4
    assert flow_weighted_average(dist, flow).item() == pytest.approx(0.75 * 0 + 0.25 * 11)


class _ZeroFlow(torch.nn.Module):
    def forward(self, a, b):
        return torch.zeros(a.shape[0], 2, *a.shape[-2:])


@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(0)
    return build_lpips("alex", allow_random_backbone=True)


def _video(seed: int, t: int = 4, h: int = 64, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h, w, generator=g)
    return torch.cat([torch.roll(base, shifts=2 * i, dims=3) for i in range(t)])  # moving texture


def test_flolpips_identical_videos_is_exactly_zero(alex):
    torch.manual_seed(1)
    metric = FloLPIPS(alex, build_pwcnet(allow_random=True))
    video = _video(0)
    values = metric.video(video, video)
    assert values.shape == (3,) and torch.equal(values, torch.zeros(3))


def test_flolpips_random_pwc_degraded_is_positive(alex):
    torch.manual_seed(1)
    metric = FloLPIPS(alex, build_pwcnet(allow_random=True))
    real = _video(0)
    g = torch.Generator().manual_seed(5)
    fake = (real + 0.1 * torch.randn(real.shape, generator=g)).clamp(0, 1)
    values = metric.video(real, fake, batch_size=2)
    assert values.shape == (3,) and torch.isfinite(values).all() and (values > 0).all()
    torch.testing.assert_close(values, metric.video(real, fake, batch_size=8))


def test_flolpips_with_equal_flows_is_plain_lpips(alex):
    """Uniform weights: the sum of per-layer spatial means, i.e. lpips's own value."""
    metric = FloLPIPS(alex, _ZeroFlow())
    real, fake = _video(0), _video(3)
    expected = alex(real[:-1] * 2 - 1, fake[:-1] * 2 - 1).flatten()
    torch.testing.assert_close(metric.video(real, fake), expected, rtol=1e-5, atol=1e-7)
    assert metric.video(real[:1], fake[:1]).numel() == 0  # one frame: no pairs
