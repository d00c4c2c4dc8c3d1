"""The adversarial loss terms equal the reference's formulas (opensora/models/vae/losses.py, v1.2.0),
written out here as the oracle."""

import pytest
import torch

from opensora_vae.losses import (adaptive_weight, discriminator_loss, generator_loss, gradient_penalty,
                                 lecam_penalty)


def reference_sigmoid_ce(labels, logits):
    """MAGVIT's sigmoid_cross_entropy_with_logits: max(x, 0) − x·z + log(1 + exp(−|x|))."""
    return torch.clamp(logits, min=0) - logits * labels + torch.log1p(torch.exp(-logits.abs()))


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, generator=g) * 3, torch.randn(4, 1, generator=g) * 3


def test_discriminator_losses(logits):
    r, f = logits
    hinge = 0.5 * (torch.mean(torch.relu(1.0 - r)) + torch.mean(torch.relu(1.0 + f)))
    vanilla = 0.5 * (torch.mean(torch.nn.functional.softplus(-r)) + torch.mean(torch.nn.functional.softplus(f)))
    nonsat = 0.5 * (reference_sigmoid_ce(torch.ones_like(r), r).mean()
                    + reference_sigmoid_ce(torch.zeros_like(f), f).mean())
    torch.testing.assert_close(discriminator_loss(r, f, "hinge"), hinge)
    torch.testing.assert_close(discriminator_loss(r, f, "vanilla"), vanilla)
    torch.testing.assert_close(discriminator_loss(r, f, "non-saturating"), nonsat)
    assert not torch.allclose(hinge, vanilla)  # the logits make the kinds differ
    with pytest.raises(ValueError, match="unknown discriminator loss type"):
        discriminator_loss(r, f, "wgan")


def test_generator_losses(logits):
    _, f = logits
    torch.testing.assert_close(generator_loss(f, "hinge"), -torch.mean(f))
    torch.testing.assert_close(generator_loss(f, "non-saturating"),
                               reference_sigmoid_ce(torch.ones_like(f), f).mean())
    with pytest.raises(ValueError, match="unknown generator loss type 'vanilla'"):
        generator_loss(f, "vanilla")  # the reference raises for it too


def test_lecam_penalty():
    value = lecam_penalty(torch.tensor(0.7), torch.tensor(-0.2), torch.tensor(0.5), torch.tensor(0.1))
    # relu(0.7 - 0.1)^2 + relu(0.5 - (-0.2))^2
    torch.testing.assert_close(value, torch.tensor(0.6 ** 2 + 0.7 ** 2))
    # Each side only counts when it is beyond the other side's EMA.
    assert lecam_penalty(torch.tensor(-1.0), torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.1)) == 0


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, generator=g, requires_grad=True)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    h = w * 1.0  # shared graph in front of both losses
    nll, gen = (h * a).sum() ** 2, (h * b).sum()
    expected = (2 * (w * a).sum() * a).norm() / (b.norm() + 1e-4)
    weight = adaptive_weight(nll, gen, w)
    torch.testing.assert_close(weight, expected.detach())
    assert not weight.requires_grad and w.grad is None  # nothing accumulated into .grad
    (nll + weight * gen).backward()  # the graph is still there for the training backward
    assert w.grad is not None
    # Clamped to [0, 1e4] when the adversarial gradient vanishes.
    w2 = torch.ones(2, requires_grad=True)
    assert adaptive_weight((w2 * 5).sum(), (w2 * 0).sum(), w2) == 1e4


def test_gradient_penalty_is_wgan_gp_on_the_inputs():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(12, 1, generator=g, requires_grad=True)
    x = torch.randn(3, 3, 1, 2, 2, generator=g, requires_grad=True)
    logits = x.flatten(1) @ weight  # dD/dx = weight for every sample
    penalty = gradient_penalty(x, logits)
    torch.testing.assert_close(penalty, (weight.norm() - 1) ** 2)
    penalty.backward()  # create_graph: the penalty trains D
    torch.testing.assert_close(weight.grad, (2 * (weight.norm() - 1) * weight / weight.norm()).detach())
