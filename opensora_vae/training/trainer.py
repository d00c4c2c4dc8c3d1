"""The trainer: setup (validated settings -> outputs, data, model, optimizer, resume), the loop,
and one guarded training step. Checkpoint files belong to `CheckpointManager`.

Order of setup (what a user error can cost): the config was validated by `load_config`; then the
data table is read and sized, the outputs folder is checked and locked, the resume point chosen
(all before any file is written), and only then logging to `<outputs>/train.log`, the model and
the loss networks are built.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from mmengine.config import Config

from ..cli import add_log_file

from ..config import check_required
from ..data import StatefulDistributedSampler, VideoDataset, build_dataloader, load_table_once_per_node
from ..distributed import DistEnv, all_gather_objects, all_reduce_sum, init_distributed
from ..errors import UserError, check_folder_location
from ..losses import LossSettings, VAELoss, build_perceptual, freeze_unreached_params
from ..models.pipeline import VideoVAEPipeline
from ..models.temporal import ResBlock
from ..precision import autocast
from .adversarial import AdversarialPhase
from .checkpoint import EMA_SUBDIR, MODEL_SUBDIR, VALIDATION_ENTRY, CheckpointManager
from .ema import EMA
from .latent_health import LatentHealth
from .logging import MAX_SKIP_EXAMPLES, RunningMeans, SkipLog, TrainLogger, check_wandb_available, preview_image
from .mixing import mixed_num_frames
from .schedule import build_lr_scheduler
from .states import (Counters, ModelState, OptimizerState, ReplicaChecksums, RNGState, SamplerState,
                     rank_generator_seed)
from .validation import Validator
from .preflight import check_clip_lengths, check_spatial_vae

logger = logging.getLogger("opensora_vae.training")

# The unreadable-sample fraction is only judged after this many read attempts (all ranks).
MIN_ATTEMPTS_FOR_SKIP_CHECK = 20
# Per-step metrics kept in memory for callers (tests, notebooks): the last steps only, so a long
# run stays flat; the whole record is in TensorBoard (and train.log).
HISTORY_LIMIT = 1_000
# torch.compile backend for `compile=True`; tests use "aot_eager" (same graphs, no C++ build).
COMPILE_BACKEND = "inductor"


class TrainingAborted(UserError, RuntimeError):
    """Training stopped on purpose: repeated non-finite losses or too many unreadable samples."""


@dataclass
class TrainResult:
    global_step: int
    last_checkpoint: Path | None
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY_LIMIT))


@dataclass
class StepResult:
    losses: dict[str, float]  # mean over ranks; empty when the step was skipped
    skipped_step: bool  # non-finite loss or gradient: no update was made
    grad_norm: float  # before clipping; nan when skipped
    num_frames: int
    skipped_samples: int  # unreadable samples behind this step, summed over ranks
    read_attempts: int
    preview: torch.Tensor | None = field(default=None, repr=False)  # (3, H, 2W) in [0, 1]
    adversarial: dict[str, float] = field(default_factory=dict)  # gan/* metrics of the D step
    latent: dict[str, float] = field(default_factory=dict)  # latent health, on its steps


def _configure_determinism(enabled: bool) -> None:
    if not enabled:
        return
    # cuBLAS needs this before its first call to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


class Trainer:
    """`Trainer(cfg).fit()` runs the whole training described by a validated train config."""

    def __init__(self, cfg: Config, env: DistEnv | None = None):
        self.cfg = cfg
        self.env = env or init_distributed()
        self.outputs = Path(cfg.outputs).expanduser()
        self.checkpoints = CheckpointManager(self.outputs, cfg.keep_last_ckpts, self.env.is_main)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, env = self.cfg, self.env
        check_required(cfg, "train")
        if cfg.wandb:
            check_wandb_available()
        check_folder_location(self.outputs, "--outputs")
        self.settings = LossSettings.from_config(cfg)
        self.fsdp = cfg.parallel == "fsdp"
        self._build_data()  # reads and sizes the table: a bad one fails before any output exists
        self.validator = Validator(cfg, env, self.checkpoints) if cfg.val_data_path is not None else None
        preflight_tables = check_clip_lengths(cfg, self.dataset, env.is_main)

        # Rank 0 owns the folder and decides what to resume, so all ranks load the same step.
        self.resume_dir = self.checkpoints.start(cfg.load, overwrite=cfg.overwrite)
        add_log_file(self.outputs / "train.log", env.rank)
        _configure_determinism(cfg.deterministic)
        self.pipe = self._build_model()
        check_spatial_vae(cfg, self.dataset, self.pipe, self.outputs, preflight_tables, env.is_main)
        self.model = self._parallelize(self.pipe)
        if cfg.compile:
            # In place (nn.Module.compile): parameter names and checkpoints stay those of eager.
            self.pipe.temporal_vae.compile(backend=COMPILE_BACKEND)
        self.params = [p for p in self.pipe.parameters() if p.requires_grad]
        if not self.params:
            raise UserError("nothing to train: every parameter is frozen")
        # Fused AdamW on CUDA (one kernel for all parameters). The CPU keeps the default foreach
        # implementation, so CPU runs keep their exact numerics (fused differs by ~1e-7 relative).
        fused = True if env.device.type == "cuda" else None
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                           eps=cfg.adam_eps, weight_decay=cfg.weight_decay, fused=fused)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, cfg.lr_schedule, self.total_steps())
        self.ema = EMA(self.pipe, cfg.ema_decay) if cfg.ema_decay else None
        self.latent_health = LatentHealth(cfg.log_every, track_spatial=not self.pipe.freeze_spatial)
        self.generator = torch.Generator(env.device)
        self.generator.manual_seed(rank_generator_seed(cfg.seed, env.rank))
        perceptual = None
        if self.settings.needs_perceptual:
            perceptual = build_perceptual(cfg.perceptual_backbone_path,
                                          cfg.perceptual_random_backbone).to(env.device)
            if cfg.compile:
                perceptual.compile(backend=COMPILE_BACKEND)
        self.loss_fn = VAELoss(self.settings, perceptual)
        self.adversarial = (AdversarialPhase(cfg, env, self.pipe.temporal_vae.decoder.conv_out.conv,
                                             self.total_steps()) if cfg.discriminator else None)
        self.counters = Counters(env.world_size, cfg.batch_size, cfg.parallel)
        self.running_means = RunningMeans(TrainLogger.RUNNING_WINDOW)
        self._register_states()
        self.resumed = self.checkpoints.restore(drop=cfg.drop_state)

    def _register_states(self) -> None:
        """Everything a resume needs, as checkpoint entries (restored in this order)."""
        cfg, env, register = self.cfg, self.env, self.checkpoints.register
        register(MODEL_SUBDIR, ModelState(self.pipe, self.fsdp))  # entries saved as weight dirs
        if self.ema is not None:
            register(EMA_SUBDIR, self.ema)
        register("optimizer", OptimizerState(self.pipe, self.optimizer, self.fsdp, dict(
            lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)))
        register("lr_scheduler", self.lr_scheduler)  # after the optimizer: it sets the resumed lr
        register("counters", self.counters)
        register("sampler", SamplerState(self.sampler, self.counters, env.is_main))
        register("rng", RNGState(self.generator, env.device, env.rank, cfg.seed, self.counters, self.sampler))
        register("replicas", ReplicaChecksums(self.pipe, self.fsdp, self.counters))
        register("running_means", self.running_means)
        if self.adversarial is not None:
            for name, state in self.adversarial.states().items():
                register(name, state)
        register("latent_health", self.latent_health)
        if self.validator is not None:
            register(VALIDATION_ENTRY, self.validator)

    @property
    def global_step(self) -> int:
        return self.counters.global_step

    def _build_model(self) -> VideoVAEPipeline:
        cfg = self.cfg
        # Same seed on every rank: random initial weights are identical before DDP/FSDP.
        torch.manual_seed(cfg.seed)
        resumed = self.checkpoints.weights_dir()
        weights = str(resumed) if resumed else cfg.ckpt_path
        model_cfg = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
        pipe = VideoVAEPipeline.from_train_config(model_cfg, ckpt_path=weights)
        frozen = freeze_unreached_params(pipe, self.settings)
        if frozen and self.env.is_main:
            logger.info("frozen (no active loss reaches them): %s", ", ".join(frozen))
        if cfg.grad_checkpoint:
            pipe.temporal_vae.set_gradient_checkpointing(True)
        pipe.to(self.env.device).train()
        if self.env.is_main:
            trainable = sum(p.numel() for p in pipe.parameters() if p.requires_grad)
            total = sum(p.numel() for p in pipe.parameters())
            logger.info("model: %.2f M parameters, %.2f M trainable; initial weights: %s",
                        total / 1e6, trainable / 1e6, weights or "random")
            spatial_pretrained = weights or model_cfg["spatial"].get("from_pretrained")
            if pipe.freeze_spatial and not spatial_pretrained:
                logger.warning(
                    "THE FROZEN SPATIAL VAE HAS RANDOM WEIGHTS: the temporal VAE learns latents of a "
                    "random autoencoder and reconstructions will be noise. Set model.spatial.from_pretrained "
                    "to an SD-VAE (hub id or local diffusers folder), or --ckpt-path to a pipeline "
                    "checkpoint (e.g. the quickstart's stage-0 output); see README 'Training on your own data'")
        return pipe

    def _parallelize(self, pipe: VideoVAEPipeline) -> nn.Module:
        if self.env.world_size == 1 and not self.fsdp:
            return pipe
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # FSDP2 warns that the pipeline returns views (x_z_rec is a time slice); the trainer
            # never modifies outputs in place, which is the case the warning is about.
            warnings.filterwarnings("ignore", message=r".*returned a view tensor.*", category=UserWarning)
            mesh = init_device_mesh(self.env.device.type, (self.env.world_size,))
            for block in pipe.temporal_vae.modules():
                if isinstance(block, ResBlock):
                    fully_shard(block, mesh=mesh)
            fully_shard(pipe, mesh=mesh)
            return pipe
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(pipe, device_ids=ids)

    def _build_data(self) -> None:
        cfg, env = self.cfg, self.env
        data = cfg.dataset
        self.dataset = VideoDataset.from_config(data, cfg.seed, table=load_table_once_per_node(data.data_path))
        self.steps_per_epoch = (len(self.dataset) // env.world_size) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"{data.data_path} has {len(self.dataset)} samples, fewer than one step needs "
                            f"(batch_size {cfg.batch_size} × {env.world_size} process(es)); lower "
                            "--batch-size or add data")
        self.sampler = StatefulDistributedSampler(len(self.dataset), env.world_size, env.rank,
                                                  shuffle=True, seed=cfg.seed, drop_last=True)
        self.loader = build_dataloader(self.dataset, cfg.batch_size, num_workers=cfg.num_workers,
                                       sampler=self.sampler, seed=cfg.seed, rank=env.rank, drop_last=True)
        # Each DataLoader iterator draws a base seed; from its own generator, not the global RNG,
        # so re-creating the iterator on resume does not shift the global RNG stream.
        self.loader.generator = torch.Generator().manual_seed(rank_generator_seed(cfg.seed + 1, env.rank))

    def save_checkpoint(self) -> Path | None:
        """All ranks call it; rank 0 writes. Returns the checkpoint dir on rank 0."""
        return self.checkpoints.save(self.global_step, self.cfg)

    # ------------------------------------------------------------------ one step
    def train_step(self, video: torch.Tensor, step: int, skipped_samples: int = 0,
                   want_preview: bool = False) -> StepResult:
        """Trains on `video (B, 3, T, H, W)` as global step `step` (1-based)."""
        cfg = self.cfg
        num_frames = mixed_num_frames(cfg.mixed_strategy, cfg.mixed_image_ratio, video.shape[2], cfg.seed, step)
        video = video[:, :, :num_frames]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.env.device, cfg.dtype):
            out = self.model(video, sample=True, generator=self.generator,
                             decode_pixels=self.settings.needs_pixels)
        # Losses in fp32, outside autocast: sums over C*H*W are large.
        terms = self.loss_fn(video, out)
        if self.adversarial is not None:
            terms = self.adversarial.add_generator_term(terms, out.x_rec, step)
        latent = self.latent_health.measure(self.pipe, out, step) if self.latent_health.due(step) else {}
        x_z_rec = out.x_z_rec.detach()
        names = sorted(terms)
        local = torch.stack([terms[n].detach().float() for n in names])
        finite = bool(torch.isfinite(local).all())
        # One all-reduce for the loss terms and the skip decision: [non-finite flag, skipped samples,
        # read attempts, *terms] (latent health and the discriminator step reduce their own metrics).
        # Every rank then takes the same skip decision, so none waits in backward for the others.
        packed = torch.cat([torch.tensor([0.0 if finite else 1.0, skipped_samples,
                                          video.shape[0] + skipped_samples], device=local.device),
                            torch.nan_to_num(local, nan=0.0, posinf=0.0, neginf=0.0)])
        packed = all_reduce_sum(packed.to(self.env.device)).cpu()
        result = StepResult(losses={}, skipped_step=True, grad_norm=float("nan"), num_frames=num_frames,
                            skipped_samples=int(packed[1].item()), read_attempts=int(packed[2].item()),
                            latent=latent)
        if packed[0].item() > 0:
            del terms
        else:
            terms["loss"].backward()
            max_norm = cfg.grad_clip if cfg.grad_clip else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            result.grad_norm = norm
            # Gradients are identical on all ranks after the DDP/FSDP reduction, so is this check.
            if math.isfinite(norm):
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.pipe)
                result.skipped_step = False
                result.losses = {n: v / self.env.world_size for n, v in zip(names, packed[3:].tolist())}
        self.optimizer.zero_grad(set_to_none=True)
        if self.adversarial is not None:  # after the VAE's backward, which needs D's weights unchanged
            result.adversarial = self.adversarial.discriminator_step(video, out.x_rec, step)
        if want_preview:
            result.preview = self._preview(video, x_z_rec)
        return result

    @torch.no_grad()
    def _preview(self, video: torch.Tensor, x_z_rec: torch.Tensor) -> torch.Tensor:
        """First frame of the first sample: input | reconstruction (a collective under FSDP)."""
        if self.fsdp:
            self.model.unshard()  # the spatial decoder is called outside the root forward
        try:
            with autocast(self.env.device, self.cfg.dtype):
                rec = self.pipe.spatial_vae.decode(x_z_rec[:1, :, :1])
        finally:
            if self.fsdp:
                self.model.reshard()
        return preview_image(video[0, :, 0], rec[0, :, 0])

    # ------------------------------------------------------------------ loop
    def _check_health(self, step: int, skipped_step: bool) -> None:
        cfg, counters = self.cfg, self.counters
        counters.nonfinite_streak = counters.nonfinite_streak + 1 if skipped_step else 0
        if skipped_step and self.env.is_main:
            logger.warning("step %d: non-finite loss or gradient norm, update skipped (%d in a row)",
                           step, counters.nonfinite_streak)
        if counters.nonfinite_streak >= cfg.max_nonfinite_steps:
            raise TrainingAborted(
                f"aborting at step {step}: the loss or gradient was non-finite for {counters.nonfinite_streak} "
                f"consecutive steps (max_nonfinite_steps={cfg.max_nonfinite_steps}). Lower the learning "
                f"rate, check the data, or resume from an earlier checkpoint.")
        if (counters.attempts_total >= MIN_ATTEMPTS_FOR_SKIP_CHECK
                and counters.skipped_total > cfg.max_skip_fraction * counters.attempts_total):
            # Every rank is here at the same step (the counts are sums over ranks): gathering is safe.
            seen: dict[str, str] = {}
            for skips in all_gather_objects(self.skips.examples):
                seen.update(skips)
            examples = "; ".join(f"{p}: {r}" for p, r in list(seen.items())[:MAX_SKIP_EXAMPLES])
            window = cfg.dataset.num_frames * cfg.dataset.frame_interval
            raise TrainingAborted(
                f"aborting at step {step}: {counters.skipped_total} of {counters.attempts_total} sample reads "
                f"failed (> max_skip_fraction={cfg.max_skip_fraction}). Unreadable: "
                f"{examples or 'none since this run started (the counts include reads before the resume)'}. "
                f"Either remove or fix those rows (`python scripts/make_csv.py <folder> <csv> --min-frames "
                f"{window}` leaves out clips shorter than a {window}-frame window) and resume with --load auto, "
                f"or allow more with --cfg-options max_skip_fraction=<a higher fraction>")

    def total_steps(self) -> int:
        total = self.cfg.epochs * self.steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps is not None else total

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> TrainResult:
        cfg, env, counters = self.cfg, self.env, self.counters
        total = self.total_steps()
        log = TrainLogger(self.outputs, env.is_main, total, self.global_step, cfg.log_every, cfg.wandb,
                          run_config=cfg.to_dict(), means=self.running_means)
        result = TrainResult(self.global_step, None)
        self.skips = SkipLog(env.rank)
        last_saved = self.global_step if self.resumed else -1
        samples_per_step = cfg.batch_size * env.world_size
        try:
            if env.is_main:
                logger.info("training up to step %d (from step %d): %d steps/epoch, %d samples/step, %s",
                            total, self.global_step, self.steps_per_epoch, samples_per_step,
                            f"{env.world_size} × {cfg.parallel}" if env.distributed else "single process")
            done = self.global_step >= total
            tick = time.perf_counter()
            while not done and counters.epoch < cfg.epochs:
                self.sampler.set_epoch(counters.epoch)
                self.dataset.set_epoch(counters.epoch)
                for batch in self.loader:
                    step = self.global_step + 1
                    self.skips.note(batch["skipped"])
                    video = batch["video"].to(env.device, non_blocking=True)
                    preview = bool(cfg.preview_every) and step % cfg.preview_every == 0
                    out = self.train_step(video, step, len(batch["skipped"]), want_preview=preview)
                    self.sampler.advance(samples_per_step)
                    counters.global_step = step
                    counters.skipped_total += out.skipped_samples
                    counters.attempts_total += out.read_attempts
                    now = time.perf_counter()
                    metrics = self._metrics(out, now - tick)
                    tick = now
                    self.lr_scheduler.step()  # once per global step: the rate is a function of the step
                    log.log_step(step, metrics)
                    if out.preview is not None:
                        log.log_preview(step, out.preview)
                    if env.is_main:
                        result.history.append({"step": step, "num_frames": out.num_frames,
                                               "indices": batch["index"].tolist(), **metrics})
                    self._check_health(step, out.skipped_step)
                    self._validate(log, final=step >= total)  # before the save: it holds the record
                    if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                        result.last_checkpoint = self.save_checkpoint()
                        last_saved = step
                    if step >= total:
                        done = True
                        break
                else:
                    counters.epoch += 1
            self._validate(log, final=True)
            if last_saved != self.global_step:
                result.last_checkpoint = self.save_checkpoint()
            elif result.last_checkpoint is None and self.resume_dir is not None:
                result.last_checkpoint = self.resume_dir
            if env.is_main:
                logger.info("training finished at step %d", self.global_step)
        finally:
            log.close()
        result.global_step = self.global_step
        return result

    def _validate(self, log: TrainLogger, final: bool = False) -> None:
        if self.validator is not None and self.validator.due(self.global_step, final):
            ema_state = self.ema.shadow if self.ema is not None else None
            self.validator.run(self.global_step, self.pipe.state_dict(), ema_state, self.pipe.export_config(), log,
                               final=final)

    def _metrics(self, out: StepResult, seconds: float) -> dict[str, float]:
        metrics = {f"loss/{k}": v for k, v in out.losses.items()}
        metrics.update({
            "train/grad_norm": out.grad_norm, "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/num_frames": out.num_frames, "train/update_skipped": float(out.skipped_step),
            "speed/steps_per_s": 1.0 / max(seconds, 1e-9),
            "speed/samples_per_s": self.cfg.batch_size * self.env.world_size / max(seconds, 1e-9),
            "data/skipped_total": self.counters.skipped_total, "data/skipped_samples_step": out.skipped_samples,
            **out.adversarial,
            **out.latent,
        })
        if self.env.device.type == "cuda":
            metrics["memory/peak_cuda_mb"] = torch.cuda.max_memory_allocated(self.env.device) / 2**20
        return metrics

    def close(self) -> None:
        """Releases the outputs folder (also done by `fit`)."""
        self.checkpoints.release()


def train(cfg: Config) -> TrainResult:
    """Runs the training of a validated train config (see `opensora_vae.config.load_config`)."""
    return Trainer(cfg).fit()
