"""One training step: clip mixing, forward, the stage's loss mix, a guarded optimizer update."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..losses import LossSettings, VAELoss
from ..models.pipeline import VideoVAEPipeline
from ..distributed import all_reduce_sum
from ..precision import autocast
from .ema import EMA

logger = logging.getLogger(__name__)

MIXED_STRATEGIES = (None, "mixed_video_image", "mixed_video_random")


def mixed_num_frames(strategy: str | None, image_ratio: float, num_frames: int, seed: int, step: int) -> int:
    """How many leading frames step `step` trains on; the same on every rank.

    Drawn from a generator seeded by (seed, step) only, never from global RNG state, so ranks
    agree without communicating and a resumed run draws what an uninterrupted one would.
    (`random.Random` hashes a str seed with SHA-512: stable across processes and machines.)
    """
    if strategy is None:
        return num_frames
    rng = random.Random(f"opensora_vae.mixed:{seed}:{step}")
    if strategy == "mixed_video_image":
        return 1 if rng.random() < image_ratio else num_frames
    if strategy == "mixed_video_random":
        return rng.randint(1, num_frames)
    raise ValueError(f"unknown mixed_strategy {strategy!r}, expected one of {MIXED_STRATEGIES}")


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


@dataclass
class StepResult:
    losses: dict[str, float]  # mean over ranks; empty when the step was skipped
    skipped_step: bool  # non-finite loss or gradient: no update was made
    grad_norm: float  # before clipping; nan when skipped
    num_frames: int
    skipped_samples: int  # unreadable samples behind this step, summed over ranks
    read_attempts: int
    preview: torch.Tensor | None = field(default=None, repr=False)  # (3, H, 2W) in [0, 1]


class TrainEngine:
    """Holds what a step needs; `model` is the (DDP/FSDP-wrapped) pipeline, `pipe` the raw one."""

    def __init__(self, model: nn.Module, pipe: VideoVAEPipeline, loss_fn: VAELoss,
                 optimizer: torch.optim.Optimizer, device: torch.device, generator: torch.Generator,
                 *, grad_clip: float | None, dtype: str, mixed_strategy: str | None,
                 mixed_image_ratio: float, seed: int, ema: EMA | None = None, fsdp: bool = False):
        if mixed_strategy not in MIXED_STRATEGIES:
            raise ValueError(f"unknown mixed_strategy {mixed_strategy!r}, expected one of {MIXED_STRATEGIES}")
        self.model, self.pipe, self.loss_fn, self.optimizer = model, pipe, loss_fn, optimizer
        self.device, self.generator, self.ema, self.fsdp = device, generator, ema, fsdp
        self.grad_clip = grad_clip
        self.dtype = dtype
        self.mixed_strategy, self.mixed_image_ratio, self.seed = mixed_strategy, mixed_image_ratio, seed
        self.params = [p for p in pipe.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: every parameter is frozen")

    def compute_losses(self, video: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Forward + loss terms; also returns the detached temporal reconstruction `x_z_rec`."""
        with autocast(self.device, self.dtype):
            out = self.model(video, sample=True, generator=self.generator,
                             decode_pixels=self.loss_fn.settings.needs_pixels)
        # Losses in fp32, outside autocast: sums over C*H*W are large.
        return self.loss_fn(video, out), out.x_z_rec.detach()

    def step(self, video: torch.Tensor, step: int, skipped_samples: int = 0,
             want_preview: bool = False) -> StepResult:
        """Trains on `video (B, 3, T, H, W)` as global step `step` (1-based)."""
        num_frames = mixed_num_frames(self.mixed_strategy, self.mixed_image_ratio, video.shape[2],
                                      self.seed, step)
        video = video[:, :, :num_frames]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms, x_z_rec = self.compute_losses(video)
        names = sorted(terms)
        local = torch.stack([terms[n].detach().float() for n in names])
        finite = bool(torch.isfinite(local).all())
        # One collective per step: [non-finite flag, skipped samples, read attempts, *terms].
        # Every rank then takes the same skip decision, so none waits in backward for the others.
        packed = torch.cat([torch.tensor([0.0 if finite else 1.0, skipped_samples,
                                          video.shape[0] + skipped_samples], device=local.device),
                            torch.nan_to_num(local, nan=0.0, posinf=0.0, neginf=0.0)])
        packed = all_reduce_sum(packed.to(self.device)).cpu()
        world = _world_size()
        any_nonfinite = packed[0].item() > 0
        result = StepResult(losses={}, skipped_step=True, grad_norm=float("nan"), num_frames=num_frames,
                            skipped_samples=int(packed[1].item()), read_attempts=int(packed[2].item()))
        if any_nonfinite:
            del terms
            self.optimizer.zero_grad(set_to_none=True)
        else:
            terms["loss"].backward()
            max_norm = self.grad_clip if self.grad_clip else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            result.grad_norm = norm
            # Gradients are identical on all ranks after the DDP/FSDP reduction, so is this check.
            if math.isfinite(norm):
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.pipe)
                result.skipped_step = False
                result.losses = {n: v / world for n, v in zip(names, packed[3:].tolist())}
            self.optimizer.zero_grad(set_to_none=True)
        if want_preview:
            result.preview = self._preview(video, x_z_rec)
        return result

    @torch.no_grad()
    def _preview(self, video: torch.Tensor, x_z_rec: torch.Tensor) -> torch.Tensor:
        """First frame of the first sample: input | reconstruction (a collective under FSDP)."""
        from .logger import preview_image

        if self.fsdp:
            self.model.unshard()  # the spatial decoder is called outside the root forward
        try:
            with autocast(self.device, self.dtype):
                rec = self.pipe.spatial_vae.decode(x_z_rec[:1, :, :1])
        finally:
            if self.fsdp:
                self.model.reshard()
        return preview_image(video[0, :, 0], rec[0, :, 0])


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
