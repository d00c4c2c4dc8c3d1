"""Training losses of the three Open-Sora 1.2 VAE stages, with the reference normalisation.

Reference semantics (`opensora/models/vae/losses.py` and `scripts/train_vae.py`, v1.2.0):
- frames are flattened to `(b t) c h w`; the L1 error is summed over C·H·W per frame and
  averaged over the `b·t` frames;
- the perceptual term `LPIPS(x, x_rec)` (one value per frame) is added to *every* pixel's L1
  before that sum, so its effective weight is `perceptual_weight · C·H·W` per frame;
- the KL of the temporal posterior is summed per sample and averaged over the batch.

The terms are returned separately (for logging) together with their total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models.distributions import DiagonalGaussian

if TYPE_CHECKING:
    from .models.pipeline import PipelineOutput, VideoVAEPipeline


def frames_l1(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """`sum |target - pred| / (b·t)` for `(B, C, T, H, W)` tensors: L1 per frame, frame mean."""
    if target.shape != pred.shape:
        raise ValueError(f"loss target {tuple(target.shape)} and prediction {tuple(pred.shape)} differ")
    b, _, t = target.shape[:3]
    return (target.float() - pred.float()).abs().sum() / (b * t)


def frames_perceptual(perceptual: nn.Module, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Reference broadcast of LPIPS over pixels: `C·H·W · sum_frames(lpips) / (b·t)`.

    Equal to adding the per-frame LPIPS value to every pixel's L1 before the sum, computed
    without materialising that broadcast.
    """
    b, c, t, h, w = x.shape
    flat = lambda v: v.float().permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # noqa: E731
    per_frame = perceptual(flat(x), flat(x_rec))  # (b·t, 1, 1, 1), inputs in [-1, 1]
    return per_frame.sum() * (c * h * w) / (b * t)


def kl_per_sample(posterior: DiagonalGaussian) -> torch.Tensor:
    """KL to N(0, I) summed over each sample, averaged over the batch."""
    # From fp32 moments: under bf16 autocast the sum over C*T*H*W would lose precision.
    kl = DiagonalGaussian(posterior.moments.float()).kl()
    return kl.sum() / kl.shape[0]


@dataclass(frozen=True)
class LossSettings:
    """Which terms a stage trains on, and their weights (the config's loss keys)."""

    # No defaults here: the config schema (configs/vae/_base_/default_train.py) holds them.
    use_real_rec_loss: bool
    use_z_rec_loss: bool
    use_image_identity_loss: bool
    perceptual_loss_weight: float
    kl_loss_weight: float
    detach_z_target: bool

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "LossSettings":
        # The config validation (opensora_vae.config) has already refused a mix without a main loss.
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__})

    @property
    def needs_pixels(self) -> bool:
        """Whether the spatial decoder must run (and can receive gradients)."""
        return self.use_real_rec_loss

    @property
    def needs_perceptual(self) -> bool:
        return self.use_real_rec_loss and self.perceptual_loss_weight > 0


def build_perceptual(backbone_path: str | None = None, allow_random_backbone: bool = False) -> nn.Module:
    """LPIPS(VGG) v0.1: the `lpips` package's linear weights are the reference loss's."""
    from .lpips import build_lpips

    return build_lpips(net="vgg", backbone_path=backbone_path, allow_random_backbone=allow_random_backbone)


class VAELoss(nn.Module):
    """The stage's loss mix on the pipeline's training outputs.

    `forward` returns `{"loss": total, <term>: value, ...}` with only the active terms:
    `pixel_l1`, `perceptual` (already weighted), `kl` (already weighted) for the pixel loss,
    `z_rec` for the latent loss, `identity` on 1-frame clips.
    """

    def __init__(self, settings: LossSettings, perceptual: nn.Module | None = None):
        super().__init__()
        if settings.needs_perceptual and perceptual is None:
            raise ValueError("perceptual_loss_weight > 0 with use_real_rec_loss needs an LPIPS module")
        self.settings = settings
        self.perceptual = perceptual if settings.needs_perceptual else None
        if self.perceptual is not None:
            self.perceptual.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, out: PipelineOutput) -> dict[str, torch.Tensor]:
        """`x`: the input clip; `out`: the pipeline's training pass on it."""
        s = self.settings
        terms: dict[str, torch.Tensor] = {}
        if s.use_real_rec_loss:
            if out.x_rec is None:
                raise ValueError("the pixel loss needs x_rec: run the pipeline with decode_pixels=True")
            terms["pixel_l1"] = frames_l1(x, out.x_rec)
            if self.perceptual is not None:
                terms["perceptual"] = s.perceptual_loss_weight * frames_perceptual(self.perceptual, x, out.x_rec)
            terms["kl"] = s.kl_loss_weight * kl_per_sample(out.posterior)
        identity = s.use_image_identity_loss and x.shape[2] == 1
        if s.use_z_rec_loss or identity:
            target = out.x_z.detach() if s.detach_z_target else out.x_z
            if s.use_z_rec_loss:
                terms["z_rec"] = frames_l1(target, out.x_z_rec)
            if identity:
                # One frame gives one latent frame: the temporal VAE should pass the image through.
                terms["identity"] = frames_l1(target, out.z)
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms


def freeze_unreached_params(pipe: VideoVAEPipeline, settings: LossSettings) -> list[str]:
    """Freezes trainable parameters that no active loss can reach; returns their module names.

    Without a pixel loss (stages 1-2) the spatial decoder gets no gradient. DDP would wait for
    its gradients forever (or need find_unused_parameters every step) and AdamW would still
    decay it, so it is frozen instead: its weights stay exactly as loaded.
    """
    frozen = []
    if not settings.needs_pixels and not pipe.freeze_spatial:
        vae2d = pipe.spatial_vae.module
        for name in ("decoder", "post_quant_conv"):
            module = getattr(vae2d, name, None)
            if module is not None and any(p.requires_grad for p in module.parameters()):
                module.requires_grad_(False)
                frozen.append(f"spatial_vae.module.{name}")
    return frozen


# ----------------------------------------------------------------------------- adversarial phase
# The reference's formulas (`opensora/models/vae/losses.py`, v1.2.0); logits are (B, 1).
DISCRIMINATOR_LOSS_TYPES = ("hinge", "vanilla", "non-saturating")
GENERATOR_LOSS_TYPES = ("hinge", "non-saturating")  # the reference raises for "vanilla"


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """hinge: `0.5(mean relu(1 − r) + mean relu(1 + f))`; vanilla: `0.5(mean softplus(−r) +
    mean softplus(f))`; non-saturating: MAGVIT's sigmoid cross-entropy with labels 1 (real) and
    0 (fake), halved (the same value as vanilla)."""
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "hinge":
        return 0.5 * (torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean())
    if kind in ("vanilla", "non-saturating"):
        # softplus(-x) is the sigmoid cross-entropy with label 1, softplus(x) with label 0.
        return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    raise ValueError(f"unknown discriminator loss type {kind!r}, expected one of {DISCRIMINATOR_LOSS_TYPES}")


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """hinge: `−mean f`; non-saturating: the sigmoid cross-entropy with label 1, `mean softplus(−f)`."""
    fake = fake_logits.float()
    if kind == "hinge":
        return -fake.mean()
    if kind == "non-saturating":
        return F.softplus(-fake).mean()
    raise ValueError(f"unknown generator loss type {kind!r}, expected one of {GENERATOR_LOSS_TYPES}")


def lecam_penalty(real_mean: torch.Tensor, fake_mean: torch.Tensor, ema_real: torch.Tensor | float,
                  ema_fake: torch.Tensor | float) -> torch.Tensor:
    """LeCam regularisation (Tseng et al. 2021): `relu(real − ema_fake)² + relu(ema_real − fake)²`
    of the batch-mean logits against the EMAs of the other side."""
    return torch.relu(real_mean - ema_fake) ** 2 + torch.relu(ema_real - fake_mean) ** 2


def adaptive_weight(nll: torch.Tensor, gen: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """`‖∇_W nll‖ / (‖∇_W gen‖ + 1e-4)` clamped to [0, 1e4], detached (VQGAN's balance of the
    adversarial term against the reconstruction at the decoder's last layer W).

    The two gradients are taken one after the other and only their norms are kept, so at most
    one gradient of W exists at a time; the graph is kept for the training backward.
    """
    nll_norm = torch.linalg.vector_norm(torch.autograd.grad(nll, last_layer, retain_graph=True)[0].float())
    gen_norm = torch.linalg.vector_norm(torch.autograd.grad(gen, last_layer, retain_graph=True)[0].float())
    return torch.clamp(nll_norm / (gen_norm + 1e-4), 0.0, 1e4).detach()


def gradient_penalty(inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The reference's WGAN-GP form: `mean_b (‖∇_x D(x)_b‖₂ − 1)²` on the inputs D saw (which
    must require grad); differentiable (create_graph) so the penalty trains D."""
    grads = torch.autograd.grad(logits, inputs, grad_outputs=torch.ones_like(logits),
                                create_graph=True, retain_graph=True)[0]
    return ((grads.flatten(1).float().norm(2, dim=1) - 1) ** 2).mean()
