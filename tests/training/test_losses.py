"""Loss terms equal the reference's normalisation; each stage trains on the terms its config names."""


import pytest
import torch

from tests.helpers import build_tiny_pipeline
from opensora_vae.config import ConfigError, load_config
from opensora_vae.losses import LossSettings, VAELoss, frames_l1, frames_perceptual, kl_per_sample
from opensora_vae.lpips import build_lpips
from opensora_vae.models import DiagonalGaussian, PipelineOutput
from tests.helpers import REPO

TRAIN = REPO / "configs/vae/train"


def settings_of(**overrides) -> LossSettings:
    """The schema's loss settings (stage 1) with `overrides`: the config holds the defaults."""
    cfg = load_config(TRAIN / "stage1.py").to_dict()
    return LossSettings.from_config({**cfg, **overrides})


@pytest.fixture(scope="module")
def vgg_lpips():
    # Real VGG weights when installed, else random: the identities below hold for any backbone.
    return build_lpips("vgg", allow_random_backbone=True)


def reference_nll(x, x_rec, lpips_model=None, weight=0.0):
    """The reference VAELoss, literally: (b t) c h w frames, LPIPS added to every pixel."""
    b, c, t, h, w = x.shape
    flat = lambda v: v.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # noqa: E731
    rec = (flat(x) - flat(x_rec)).abs()
    if lpips_model is not None:
        rec = rec + weight * lpips_model(flat(x), flat(x_rec))
    return rec.sum() / rec.shape[0]


def test_l1_is_summed_per_frame_and_averaged_over_frames():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randn(2, 3, 4, 5, 6, generator=g)
    by_hand = (x - y).abs().sum(dim=(1, 3, 4)).mean()  # sum over C,H,W; mean over the 2*4 frames
    assert torch.allclose(frames_l1(x, y), by_hand)
    assert torch.allclose(frames_l1(x, y), reference_nll(x, y))
    with pytest.raises(ValueError, match="differ"):
        frames_l1(x, y[:, :, :2])


def test_perceptual_term_is_lpips_broadcast_to_every_pixel(vgg_lpips):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    x_rec = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    per_frame = vgg_lpips(x.permute(0, 2, 1, 3, 4).reshape(6, 3, 32, 32),
                          x_rec.permute(0, 2, 1, 3, 4).reshape(6, 3, 32, 32)).flatten()
    assert per_frame.min() > 0
    # 0.1 * C*H*W * lpips per frame, averaged over frames.
    assert torch.allclose(0.1 * frames_perceptual(vgg_lpips, x, x_rec), 0.1 * 3 * 32 * 32 * per_frame.mean(),
                          rtol=1e-5)
    loss = VAELoss(settings_of(use_real_rec_loss=True, use_z_rec_loss=False, use_image_identity_loss=False,
                                perceptual_loss_weight=0.1, kl_loss_weight=0.0), vgg_lpips)
    moments = torch.zeros(2, 8, 1, 4, 4)
    terms = loss(x, PipelineOutput(x_rec=x_rec, x_z_rec=None, z=None, posterior=DiagonalGaussian(moments),
                                   x_z=None))
    assert torch.allclose(terms["pixel_l1"] + terms["perceptual"],
                          reference_nll(x, x_rec, vgg_lpips, 0.1), rtol=1e-5)


def test_kl_is_summed_per_sample_and_averaged_over_batch():
    g = torch.Generator().manual_seed(2)
    moments = torch.randn(3, 8, 2, 4, 4, generator=g)
    posterior = DiagonalGaussian(moments)
    mean, logvar = moments[:, :4], moments[:, 4:]
    per_sample = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3, 4))
    assert torch.allclose(kl_per_sample(posterior), per_sample.sum() / 3)
    loss = VAELoss(settings_of(use_real_rec_loss=True, use_z_rec_loss=False, use_image_identity_loss=False,
                                perceptual_loss_weight=0.0, kl_loss_weight=1e-6))
    x = torch.zeros(3, 3, 2, 8, 8)
    terms = loss(x, PipelineOutput(x_rec=x, x_z_rec=None, z=None, posterior=posterior, x_z=None))
    assert set(terms) == {"pixel_l1", "kl", "loss"}  # weight 0: no perceptual term at all
    assert terms["pixel_l1"] == 0 and torch.allclose(terms["kl"], 1e-6 * per_sample.mean())


def _stage_terms(stage: int, num_frames: int, lpips_model):
    cfg = load_config(TRAIN / f"stage{stage}.py")
    settings = LossSettings.from_config(cfg)
    pipe = build_tiny_pipeline(freeze_spatial=cfg.model.freeze_spatial).train()
    x = torch.rand(1, 3, num_frames, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    out = pipe(x, generator=torch.Generator().manual_seed(4), decode_pixels=settings.needs_pixels)
    return settings, x, out, VAELoss(settings, lpips_model)(x, out)


@pytest.mark.parametrize("num_frames", [1, 5])
def test_stage1_trains_on_latent_reconstruction_plus_identity_on_images(num_frames):
    settings, x, out, terms = _stage_terms(1, num_frames, None)
    x_rec, x_z_rec, z, x_z = out.x_rec, out.x_z_rec, out.z, out.x_z
    assert x_rec is None  # no pixel loss: the spatial decoder is skipped
    expected = {"z_rec", "loss"} | ({"identity"} if num_frames == 1 else set())
    assert set(terms) == expected
    assert torch.allclose(terms["z_rec"], reference_nll(x_z, x_z_rec))
    total = terms["z_rec"]
    if num_frames == 1:
        assert z.shape == x_z.shape  # one frame → one latent frame
        assert torch.allclose(terms["identity"], reference_nll(x_z, z))
        total = total + terms["identity"]
    assert torch.allclose(terms["loss"], total)


@pytest.mark.parametrize("num_frames", [1, 5])
def test_stage2_has_no_identity_loss(num_frames):
    _, _, out, terms = _stage_terms(2, num_frames, None)
    assert set(terms) == {"z_rec", "loss"} and out.x_rec is None
    assert torch.allclose(terms["loss"], reference_nll(out.x_z, out.x_z_rec))


@pytest.mark.parametrize("num_frames", [1, 5])
def test_stage3_is_pixel_l1_plus_perceptual_plus_kl(num_frames, vgg_lpips):
    settings, x, out, terms = _stage_terms(3, num_frames, vgg_lpips)
    x_rec, posterior = out.x_rec, out.posterior
    assert set(terms) == {"pixel_l1", "perceptual", "kl", "loss"}
    assert (settings.perceptual_loss_weight, settings.kl_loss_weight) == (0.1, 1e-6)
    nll = reference_nll(x, x_rec, vgg_lpips, 0.1)
    kl = posterior.kl().sum() / x.shape[0]
    assert torch.allclose(terms["loss"], nll + 1e-6 * kl, rtol=1e-5)
    assert torch.allclose(terms["kl"], 1e-6 * kl)


@pytest.mark.parametrize("detach", [True, False])
def test_detach_flag_decides_whether_the_latent_target_gets_gradient(detach):
    settings = settings_of(use_z_rec_loss=True, use_image_identity_loss=True, detach_z_target=detach)
    g = torch.Generator().manual_seed(5)
    x_z = torch.randn(1, 4, 1, 4, 4, generator=g).requires_grad_()
    x_z_rec = torch.randn(1, 4, 1, 4, 4, generator=g).requires_grad_()
    z = torch.randn(1, 4, 1, 4, 4, generator=g).requires_grad_()
    terms = VAELoss(settings)(torch.zeros(1, 3, 1, 32, 32),
                              PipelineOutput(x_rec=None, x_z_rec=x_z_rec, z=z, posterior=None, x_z=x_z))
    terms["loss"].backward()
    assert torch.equal(x_z_rec.grad, torch.sign(x_z_rec - x_z).detach())  # d|a-b|/da, one frame
    if detach:
        assert x_z.grad is None
    else:  # the reference: the spatial encoder is pulled towards the temporal reconstruction
        expected = torch.sign(x_z - x_z_rec) + torch.sign(x_z - z)
        assert torch.equal(x_z.grad, expected.detach())


def test_invalid_loss_settings_fail_clearly():
    with pytest.raises(ConfigError, match="use_real_rec_loss and/or use_z_rec_loss"):
        load_config(TRAIN / "stage1.py", cfg_options=["use_z_rec_loss=False"])
    with pytest.raises(ValueError, match="needs an LPIPS module"):
        VAELoss(settings_of(use_real_rec_loss=True, use_z_rec_loss=False))
    with pytest.raises(ValueError, match="decode_pixels=True"):
        VAELoss(settings_of(use_real_rec_loss=True, perceptual_loss_weight=0.0))(
            torch.zeros(1, 3, 1, 8, 8), PipelineOutput(x_rec=None, x_z_rec=torch.zeros(1, 4, 1, 1, 1), z=None,
                                                       posterior=None, x_z=torch.zeros(1, 4, 1, 1, 1)))
