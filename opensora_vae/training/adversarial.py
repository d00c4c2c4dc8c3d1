"""The adversarial phase: a 3D StyleGAN discriminator that sharpens the decoder (off by default;
`discriminator = dict(...)` in the config turns it on, see configs/vae/train/stage3_gan.py).

One training step with it (the trainer calls the two methods around its generator update):
1. `add_generator_term(terms, x_rec, step)`: D judges the reconstruction (D's weights frozen for
   this pass, so only the VAE gets gradients); the term `adaptive_weight × generator_factor ×
   discriminator_factor × g_loss` joins the VAE loss as `terms["adversarial"]`. The adaptive weight
   (VQGAN's) balances ‖∇nll‖ against ‖∇g_loss‖ at the temporal decoder's output conv weight.
2. the trainer's backward and optimizer step of the VAE;
3. `discriminator_step(video, x_rec, step)`: one AdamW step of D on the real clip and the detached
   reconstruction (one forward of both), plus the optional LeCam and gradient-penalty terms. It
   must come after the VAE's backward, whose graph holds D's weights as they were in step 1.
Both are skipped before `discriminator_start` (the reference's weights there are 0).

Clips: D judges fixed windows of `dataset.num_frames` frames; shorter prefixes and 1-frame images
repeat their last frame (`fit_clip_length`), real and fake alike, so no step lacks the term.

Parallelism: D is replicated on every rank (DDP) under both `parallel` modes (90.7 M parameters
at 256×256×33 against the VAE's 393 M); under FSDP2 the VAE is sharded and the adaptive weight
reads its root-level last layer, which FSDP2 keeps unsharded between forward and backward.
State (checkpoint entries): the discriminator's weights, its optimizer and the LeCam EMAs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..distributed import DistEnv, all_reduce_sum
from ..losses import adaptive_weight, discriminator_loss, generator_loss, gradient_penalty, lecam_penalty
from ..models.discriminator import StyleGANDiscriminator3D, fit_clip_length
from ..precision import autocast
from .schedule import build_lr_scheduler
from .states import ModelState, OptimizerState

logger = logging.getLogger("opensora_vae.training")

LECAM_EMA_DECAY = 0.999  # the reference's LeCamEMA decay
# Seed offset of the discriminator's initial weights (drawn from a generator of their own, so
# turning the phase on does not shift the global RNG stream of the rest of the run).
DISCRIMINATOR_SEED_OFFSET = 7919
# The checkpoint entries of `states()`, in load order: the scheduler after the optimizer, which sets
# the resumed lr. training/checkpoint.py names the config key that keeps them.
ADVERSARIAL_ENTRIES = ("discriminator", "discriminator_optimizer", "discriminator_lr_scheduler", "lecam_ema")


@dataclass(frozen=True)
class AdversarialSettings:
    """The config's adversarial keys (defaults: configs/vae/_base_/default_train.py)."""

    discriminator_start: int
    discriminator_factor: float
    generator_factor: float
    generator_loss_type: str
    discriminator_loss_type: str
    lecam_loss_weight: float | None
    gradient_penalty_loss_weight: float | None
    discriminator_grad_clip: float | None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "AdversarialSettings":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__})

    def active(self, step: int) -> bool:
        """Whether global step `step` (1-based) has the adversarial terms: the reference's
        0-based step s has them from s >= discriminator_start, i.e. step > discriminator_start."""
        return self.discriminator_factor > 0 and step > self.discriminator_start


class LeCamEMA:
    """EMAs of D's mean real and fake logits (decay 0.999, from 0 as the reference's), the same on
    every rank (updated with the means over ranks)."""

    def __init__(self, decay: float = LECAM_EMA_DECAY):
        self.decay = decay
        self.real = torch.zeros((), dtype=torch.float64)
        self.fake = torch.zeros((), dtype=torch.float64)

    def update(self, real_mean: float, fake_mean: float) -> None:
        self.real = self.real * self.decay + real_mean * (1 - self.decay)
        self.fake = self.fake * self.decay + fake_mean * (1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"real": self.real.clone(), "fake": self.fake.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.real = state["real"].to(torch.float64).clone()
        self.fake = state["fake"].to(torch.float64).clone()


class AdversarialPhase:
    """Builds the discriminator (+ DDP), its AdamW and the LeCam EMA from a validated config."""

    def __init__(self, cfg: Mapping[str, Any], env: DistEnv, last_layer: nn.Module, total_steps: int):
        """`last_layer`: the module whose `.weight` is the adaptive weight's W (the temporal
        decoder's output conv); read at each step, since FSDP2 swaps it between shards and the
        gathered tensor. `total_steps`: the run's last global step (the end of D's lr schedule)."""
        self.settings = AdversarialSettings.from_config(cfg)
        self.env = env
        self.dtype = cfg["dtype"]
        self.last_layer = last_layer
        dataset = cfg["dataset"]
        arch = dict(cfg["discriminator"])
        with torch.random.fork_rng(devices=[]):
            # Same weights on every rank (FSDP/DDP need equal replicas), independent of the global RNG.
            torch.manual_seed(cfg["seed"] + DISCRIMINATOR_SEED_OFFSET)
            self.discriminator = StyleGANDiscriminator3D(image_size=tuple(dataset["image_size"]),
                                                         num_frames=dataset["num_frames"], **arch)
        self.discriminator.to(env.device).train()
        self.num_frames = self.discriminator.num_frames
        self.wrapped: nn.Module = self.discriminator
        if env.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [env.device.index] if env.device.type == "cuda" else None
            # The blur filters are constant buffers: nothing to broadcast each forward.
            self.wrapped = DistributedDataParallel(self.discriminator, device_ids=ids, broadcast_buffers=False)
        hyper = dict(lr=cfg["discriminator_lr"], betas=tuple(cfg["discriminator_adam_betas"]),
                     eps=cfg["discriminator_adam_eps"], weight_decay=cfg["discriminator_weight_decay"])
        fused = True if env.device.type == "cuda" else None
        self.optimizer = torch.optim.AdamW(self.discriminator.parameters(), fused=fused, **hyper)
        # Over the steps D trains (after discriminator_start), stepped once per such step.
        active_steps = max(1, total_steps - max(self.settings.discriminator_start, 0))
        self.lr_scheduler = build_lr_scheduler(self.optimizer, cfg["discriminator_lr_schedule"], active_steps)
        self.lecam = LeCamEMA()
        self._hyper = hyper
        self._pending: dict[str, torch.Tensor] = {}
        if env.is_main:
            count = sum(p.numel() for p in self.discriminator.parameters())
            logger.info("adversarial phase: discriminator %.2f M parameters on %d-frame %s windows, from step %d",
                        count / 1e6, self.num_frames, "x".join(map(str, self.discriminator.image_size)),
                        max(self.settings.discriminator_start, 0) + 1)

    def states(self) -> dict[str, Any]:
        """The checkpoint entries, by name (`ADVERSARIAL_ENTRIES`, in that order)."""
        # Never sharded (replicated under both parallel modes): the plain module's full state;
        # the weights keep the reference's state_dict keys and load strictly.
        return dict(zip(ADVERSARIAL_ENTRIES, (ModelState(self.discriminator, fsdp=False),
                                              OptimizerState(self.discriminator, self.optimizer, False, self._hyper),
                                              self.lr_scheduler, self.lecam), strict=True))

    def _last_layer_weight(self) -> torch.Tensor:
        weight = self.last_layer.weight
        if type(weight).__name__ == "DTensor" or hasattr(weight, "full_tensor"):
            raise RuntimeError(
                "adaptive weight: the temporal decoder's output conv weight is still sharded (FSDP) after the "
                "forward, so its gradient cannot be taken; keep that conv in the root FSDP module (the "
                "trainer's layout), or train the adversarial phase with parallel='ddp'")
        return weight

    # ------------------------------------------------------------------ generator side
    def add_generator_term(self, terms: dict[str, torch.Tensor], x_rec: torch.Tensor,
                           step: int) -> dict[str, torch.Tensor]:
        """Adds `terms["adversarial"]` (weighted) to the VAE loss terms and to `terms["loss"]`.

        `terms` holds `pixel_l1` (+ `perceptual`): their sum is the reference's nll. Unchanged
        before discriminator_start."""
        s = self.settings
        self._pending = {}
        if not s.active(step):
            return terms
        fake = fit_clip_length(x_rec, self.num_frames)
        # D's weights get no gradient from the generator's loss (D is updated by its own step), so
        # they are frozen for this pass: no wasted weight gradients, no DDP reduction.
        self.discriminator.requires_grad_(False)
        try:
            with autocast(self.env.device, self.dtype):
                fake_logits = self.discriminator(fake)
        finally:
            self.discriminator.requires_grad_(True)
        g_loss = generator_loss(fake_logits, s.generator_loss_type)
        nll = terms["pixel_l1"] + terms["perceptual"] if "perceptual" in terms else terms["pixel_l1"]
        try:
            d_weight = adaptive_weight(nll, g_loss, self._last_layer_weight())
        except RuntimeError as err:
            if "appears to not have been used in the graph" in str(err):
                raise RuntimeError("adaptive weight: the temporal decoder's output conv weight is not part of "
                                   f"this step's graph ({err})") from err
            raise
        weighted = d_weight * s.generator_factor * s.discriminator_factor * g_loss
        self._pending = {"g_loss": g_loss.detach(), "d_weight": d_weight.detach()}
        terms = dict(terms)
        terms["adversarial"] = weighted
        terms["loss"] = terms["loss"] + weighted
        return terms

    # ------------------------------------------------------------------ discriminator side
    def discriminator_step(self, video: torch.Tensor, x_rec: torch.Tensor, step: int) -> dict[str, float]:
        """One update of D on `video` (real) and `x_rec` (detached here); returns the metrics
        (means over ranks), empty before discriminator_start. All ranks call it every step."""
        s = self.settings
        if not s.active(step):
            return {}
        b = video.shape[0]
        real = fit_clip_length(video.detach(), self.num_frames)
        fake = fit_clip_length(x_rec.detach(), self.num_frames)
        if s.gradient_penalty_loss_weight:
            real = real.clone().requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.env.device, self.dtype):
            logits = self.wrapped(torch.cat([real, fake.to(real.dtype)]))
        real_logits, fake_logits = logits[:b].float(), logits[b:].float()
        d_loss = discriminator_loss(real_logits, fake_logits, s.discriminator_loss_type)
        loss = s.discriminator_factor * d_loss
        real_mean, fake_mean = real_logits.mean(), fake_logits.mean()
        zero = torch.zeros((), device=loss.device)
        lecam = gp = zero
        if s.lecam_loss_weight:
            # Against the EMAs of the previous steps (this step's means join them after the update).
            lecam = s.lecam_loss_weight * lecam_penalty(real_mean, fake_mean, self.lecam.real.to(loss.device, torch.float32),
                                                        self.lecam.fake.to(loss.device, torch.float32))
            loss = loss + lecam
        if s.gradient_penalty_loss_weight:
            gp = s.gradient_penalty_loss_weight * gradient_penalty(real, real_logits)
            loss = loss + gp
        loss.backward()
        max_norm = s.discriminator_grad_clip if s.discriminator_grad_clip else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), max_norm))
        # Gradients are equal on all ranks after the DDP reduction, so is this decision.
        updated = math.isfinite(norm)
        if updated:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.lr_scheduler.step()  # skipped updates included: the rate is a function of the step
        # Set by this step's add_generator_term, which the trainer calls first at every active step
        # (zeros only for a caller that steps D alone).
        pending = self._pending
        names = ["d_loss", "logits_real", "logits_fake", "lecam", "gradient_penalty", "g_loss", "d_weight"]
        values = torch.stack([d_loss.detach(), real_mean.detach(), fake_mean.detach(), lecam.detach(), gp.detach(),
                              pending.get("g_loss", zero).float(), pending.get("d_weight", zero).float()])
        means = (all_reduce_sum(values.to(self.env.device)) / self.env.world_size).cpu().tolist()
        metrics = {f"gan/{n}": v for n, v in zip(names, means)}
        if not s.lecam_loss_weight:
            del metrics["gan/lecam"]
        elif updated and math.isfinite(metrics["gan/logits_real"]) and math.isfinite(metrics["gan/logits_fake"]):
            self.lecam.update(metrics["gan/logits_real"], metrics["gan/logits_fake"])
        if not s.gradient_penalty_loss_weight:
            del metrics["gan/gradient_penalty"]
        metrics.update({"gan/d_grad_norm": norm, "gan/d_update_skipped": float(not updated), "gan/d_lr": lr})
        return metrics
