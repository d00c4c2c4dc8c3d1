"""Stage 0 (demo only): briefly train the tiny spatial AutoencoderKL on frames of the sample.

Stage 1 freezes the spatial VAE and trains the temporal VAE on its latents, so with a random
spatial VAE the whole recipe would be meaningless. Real runs start from the pretrained SD-VAE;
offline (no hub) the demo trains the tiny one here first, then saves a full pipeline checkpoint
(trained tiny spatial + random tiny temporal) that stage 1 loads with ``--ckpt-path``.

Loss: the reference normalisation of stage 3 without the perceptual term — L1 summed over
C·H·W per frame plus ``kl_weight`` × KL summed per frame, averaged over the batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from opensora_vae.data.table import load_table
from opensora_vae.data.video_io import VideoFile, is_image, read_image
from opensora_vae.models import VideoVAEPipeline
from opensora_vae.training.logging import preview_image
from opensora_vae.training.preflight import spatial_psnr  # the trainer's preflight check, same number


@dataclass
class Stage0Result:
    losses: list[float]
    heldout_psnr_before: float  # random spatial VAE, for comparison
    heldout_psnr: float
    checkpoint: Path  # save_pretrained dir: `--ckpt-path` of stage 1
    seconds: float
    num_train_frames: int = 0
    num_heldout_frames: int = 0


def load_frames(csv_path: str | Path, frames_per_video: int | None = None) -> torch.Tensor:
    """Every image and (up to ``frames_per_video`` evenly spaced) video frames of a CSV's
    files, as float (N, 3, H, W) in [-1, 1]. All files must share one frame size."""
    chunks = []
    for path in load_table(csv_path):
        if is_image(path):
            chunks.append(read_image(path)[None])
            continue
        video = VideoFile(path)
        count = video.num_frames if frames_per_video is None else min(frames_per_video, video.num_frames)
        chunks.append(video.read(np.linspace(0, video.num_frames - 1, count).round().astype(int)))
    sizes = {c.shape[1:3] for c in chunks}
    if len(sizes) != 1:
        raise ValueError(f"{csv_path}: frames of different sizes {sorted(sizes)}; stage 0 needs one size")
    frames = torch.from_numpy(np.concatenate(chunks)).permute(0, 3, 1, 2)
    return frames.float() / 127.5 - 1.0


def spatial_vae_loss(vae, x: torch.Tensor, kl_weight: float, generator: torch.Generator) -> torch.Tensor:
    posterior = vae.encode(x).latent_dist
    rec = vae.decode(posterior.sample(generator=generator)).sample
    l1 = (rec - x).abs().flatten(1).sum(dim=1).mean()
    return l1 + kl_weight * posterior.kl().mean()


PROGRESS_LINES = 10  # progress lines per run


def progress_line(step: int, steps: int, losses: list[float], since: float) -> str:
    """One plain line, readable in a log file (a redrawn progress bar is not): the step, the loss
    now and its mean over the steps since the previous line, elapsed time, and the ETA at the
    mean step time so far."""
    elapsed = time.perf_counter() - since
    window = losses[-max(1, steps // PROGRESS_LINES):]
    eta = elapsed / step * (steps - step)
    return (f"stage 0: step {step}/{steps}, loss {losses[-1]:.4g} (mean of the last {len(window)}: "
            f"{sum(window) / len(window):.4g}), {elapsed:.0f} s elapsed, ETA {eta:.0f} s")


def train_spatial_vae(vae, frames: torch.Tensor, steps: int, batch_size: int = 16, lr: float = 1e-3,
                      kl_weight: float = 1e-6, grad_clip: float = 1.0, seed: int = 42,
                      progress: bool = True, writer=None) -> list[float]:
    """AdamW on random frame batches; returns the loss of every step (also `loss/loss` in the
    TensorBoard `writer`, when given, as the trainer logs it)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not any(p.requires_grad for p in vae.parameters()):
        raise ValueError("the spatial VAE is frozen: unfreeze it (pipe.set_freeze_spatial(False)) to train it")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    losses = []
    every, start = max(1, steps // PROGRESS_LINES), time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(len(frames), (min(batch_size, len(frames)),), generator=generator)
        loss = spatial_vae_loss(vae, frames[idx], kl_weight, generator)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"stage 0: non-finite loss at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if writer is not None:
            writer.add_scalar("loss/loss", losses[-1], step)
        if progress and (step % every == 0 or step == steps):
            print(progress_line(step, steps, losses, start), flush=True)
    vae.eval()
    return losses


@torch.no_grad()
def _log_heldout(writer, vae, frames: torch.Tensor, value: float, step: int) -> None:
    vae.eval()
    x = frames[:1]
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
    writer.add_scalar("heldout/psnr", value, step)
    writer.add_image("preview/input|reconstruction", preview_image(x[0], rec[0]), step)


def run_stage0(model_cfg: dict, train_csv: str | Path, heldout_csv: str | Path, out_dir: str | Path,
               steps: int = 300, batch_size: int = 16, lr: float = 1e-3, kl_weight: float = 1e-6,
               seed: int = 42, frames_per_video: int | None = None,
               progress: bool = True) -> Stage0Result:
    """Train the spatial VAE of a (tiny) pipeline config and save the whole pipeline to
    ``out_dir/model`` (temporal VAE: random weights from the same seed)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    pipe = VideoVAEPipeline.from_train_config(dict(model_cfg))
    pipe.set_freeze_spatial(False)  # a stage-1 config freezes the spatial VAE; here it is what trains
    vae = pipe.spatial_vae.module
    train_frames = load_frames(train_csv, frames_per_video)
    heldout_frames = load_frames(heldout_csv)
    # TensorBoard like the training stages: the loss curve, the held-out PSNR and a held-out
    # frame (input | reconstruction) before and after.
    writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))
    before = spatial_psnr(vae, heldout_frames)
    _log_heldout(writer, vae, heldout_frames, before, step=0)
    losses = train_spatial_vae(vae, train_frames, steps, batch_size, lr, kl_weight, seed=seed,
                               progress=progress, writer=writer)
    after = spatial_psnr(vae, heldout_frames)
    _log_heldout(writer, vae, heldout_frames, after, step=steps)
    writer.close()
    checkpoint = Path(out_dir) / "model"
    pipe.save_pretrained(checkpoint)
    return Stage0Result(losses, before, after, checkpoint, time.perf_counter() - start,
                        num_train_frames=len(train_frames), num_heldout_frames=len(heldout_frames))
