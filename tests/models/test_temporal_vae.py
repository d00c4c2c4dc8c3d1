"""The temporal VAE reproduces the reference numerically and follows its time arithmetic."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from opensora_vae.config import model_defaults
from opensora_vae.models import CausalConv3d, DiagonalGaussian, TemporalVAE


@pytest.fixture(scope="module")
def golden(assets_dir):
    meta = json.loads((assets_dir / "golden_temporal_small.json").read_text())
    tensors = load_file(str(assets_dir / "golden_temporal_small.safetensors"))
    cfg = {k: v for k, v in meta["config"].items() if k != "activation_fn"}
    model = TemporalVAE(**cfg).eval()
    state = {k[len("state_dict."):]: v.float() for k, v in tensors.items() if k.startswith("state_dict.")}
    model.load_state_dict(state, strict=True)
    return model, tensors, meta


@pytest.mark.parametrize("T", [17, 1])
def test_golden_parity_with_reference(golden, T):
    model, t, meta = golden
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]
    with torch.no_grad():
        posterior = model.encode(t[f"input.T{T}"])
        recon = model.decode(posterior.mode(), num_frames=T)
    assert (posterior.mean - t[f"mean.T{T}"]).abs().max() <= 1e-5
    assert (posterior.logvar - t[f"logvar.T{T}"]).abs().max() <= 1e-5
    assert (recon - t[f"recon.T{T}"]).abs().max() <= 1e-5


def test_released_temporal_size():
    with torch.device("meta"):
        model = TemporalVAE(**model_defaults()["temporal"])  # the released sizes, from model_v1_2.py
    assert sum(p.numel() for p in model.parameters()) == 309_687_144


@pytest.mark.parametrize("T", [1, 2, 9, 16, 17, 18, 33, 35])
def test_lengths_and_front_padding(golden, T):
    """Latent length ceil(T/4); output length T; zeros are prepended (not appended)."""
    model, _, _ = golden
    x = torch.randn(1, 4, T, 8, 8, generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        post = model.encode(x)
        recon = model.decode(post.mode(), num_frames=T)
        pad = (4 - T % 4) % 4
        padded = torch.cat([torch.zeros(1, 4, pad, 8, 8), x], dim=2)
        post_padded = model.encode(padded)
    assert post.mean.shape[2] == math.ceil(T / 4) == model.get_latent_size([T, 8, 8])[0]
    assert recon.shape == x.shape
    torch.testing.assert_close(post.mean, post_padded.mean, rtol=0, atol=1e-6)


def test_group_norm_spans_time_so_chunks_matter(golden):
    """GroupNorm statistics span the whole clip (as in the reference), so the encoder is causal
    in its convolutions but not strictly in time: encoding a prefix differs from slicing the
    full encoding. This is why micro-frame chunking changes results and is part of the model."""
    model, _, _ = golden
    x = torch.randn(1, 4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.encode(x).mean
        prefix = model.encode(x[:, :, :8]).mean
    assert full.shape[2] == 4 and prefix.shape[2] == 2
    assert (full[:, :, :2] - prefix).abs().max() > 1e-4


def test_causal_conv_padding():
    conv = CausalConv3d(1, 1, 3, stride=(2, 1, 1))
    assert conv.time_pad == 1 and conv.padding == (1, 1, 1, 1, 1, 0)
    assert CausalConv3d(1, 1, 3).time_pad == 2
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        conv.conv.bias.zero_()
        x = torch.zeros(1, 1, 4, 3, 3)
        x[:, :, 0, 1, 1] = 1.0
        out = conv(x)
    # Output frame 0 sees [pad, x0, x1]; frame 1 sees [x1, x2, x3]: only frame 0 sees the impulse.
    assert out.shape[2] == 2
    assert out[0, 0, 0, 1, 1] == 1.0 and out[0, 0, 1].abs().sum() == 0


def test_time_upsample_channel_order():
    from opensora_vae.models.temporal import Decoder

    x = torch.arange(4 * 3, dtype=torch.float32).view(1, 4, 3, 1, 1).expand(1, 4, 3, 1, 2)
    out = Decoder._time_upsample(x.contiguous())
    assert out.shape == (1, 2, 6, 1, 2)
    # frame 2t from channel 2c, frame 2t+1 from channel 2c+1
    for c in range(2):
        for t in range(3):
            assert out[0, c, 2 * t, 0, 0] == x[0, 2 * c, t, 0, 0]
            assert out[0, c, 2 * t + 1, 0, 0] == x[0, 2 * c + 1, t, 0, 0]


def test_diagonal_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(2, 8, 3, 4, 4, generator=g) * 3
    moments[:, 4:, 0] = 40.0  # beyond the clamp
    post = DiagonalGaussian(moments)
    assert post.logvar.max() == 20.0
    mean, logvar = moments[:, :4], moments[:, 4:].clamp(-30, 20)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean.double(), (0.5 * logvar.double()).exp()),
        torch.distributions.Normal(torch.zeros_like(mean, dtype=torch.float64), 1.0))
    torch.testing.assert_close(post.kl().double(), ref.sum(dim=(1, 2, 3, 4)), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(post.std, (0.5 * post.logvar).exp())
    assert torch.equal(post.mode(), moments[:, :4])
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, post.mean)


def test_gradient_checkpointing_same_values_and_grads(golden):
    model, t, _ = golden
    x = t["input.T17"]
    results = []
    for enabled in (False, True):
        model.train()
        model.set_gradient_checkpointing(enabled)
        model.zero_grad()
        recon, post, _ = model(x, sample=False)
        loss = recon.square().mean() + post.kl().mean()
        loss.backward()
        results.append((loss.detach(), model.encoder.conv_in.conv.weight.grad.clone()))
    model.set_gradient_checkpointing(False)
    model.eval()
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
