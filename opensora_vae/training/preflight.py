"""Checks of the user's data before step 1, each costing seconds, so that a run which cannot
work says so at once rather than hours in:

- clip lengths (`check_clip_lengths`, before any output): the frame counts of the table's videos
  (an evenly spaced sample of a large table, headers only) against the window this stage reads
  (`dataset.num_frames × frame_interval`: 33 frames in stage 3). Too-short videos are skipped
  and counted during training; when most rows are too short the run is refused, naming
  `make_csv --min-frames`; otherwise a warning gives the count.
- the spatial VAE on the user's content (`check_spatial_vae`, once the model is built): a few
  clips are reconstructed by the spatial VAE alone and the PSNR is logged; below
  `preflight_min_psnr` a loud warning (a frozen spatial VAE bounds every later stage).

Both results are written to `<outputs>/preflight.json`. Rank 0 checks; the table verdict is
shared with every rank so that all stop or none does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.video_io import MediaReadError, VideoFile, is_image
from ..distributed import rank0_decides
from ..errors import UserError
from ..metrics.psnr import psnr

logger = logging.getLogger(__name__)

PREFLIGHT_FILE = "preflight.json"
TABLE_CHECK_SECONDS = 30.0  # the frame-count check stops after this long (slow or remote storage)
MAX_EXAMPLES = 3  # too-short files named in preflight.json (and the first in the refusal)


class ClipsTooShortError(UserError):
    """Most videos of the table are shorter than the window this stage reads."""


@dataclass
class ClipLengthReport:
    needed_frames: int  # num_frames × frame_interval of this stage
    rows_total: int
    rows_checked: int = 0
    videos_checked: int = 0  # multi-frame videos among the checked rows (images are 1-frame clips)
    too_short: int = 0
    unreadable: int = 0
    examples: list[str] = field(default_factory=list)  # "path (N frames)"
    seconds: float = 0.0


@dataclass
class SpatialReport:
    psnr: float  # dB, mean over the frames (posterior mode, frames in [0, 1])
    threshold: float
    clips: int
    frames: int
    frozen: bool  # the spatial VAE is frozen in this stage

    @property
    def below_threshold(self) -> bool:
        return self.psnr < self.threshold


def _row_indices(total: int, limit: int) -> np.ndarray:
    if total <= limit:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, limit).round().astype(np.int64))


def _count_clip_lengths(dataset, limit: int) -> ClipLengthReport:
    report = ClipLengthReport(dataset.num_frames * dataset.frame_interval, len(dataset))
    start = time.perf_counter()
    for i in _row_indices(len(dataset), limit):
        if time.perf_counter() - start > TABLE_CHECK_SECONDS:
            break
        report.rows_checked += 1
        path = dataset.paths[int(i)]
        if is_image(path):
            continue
        try:
            video = VideoFile(path)
            frames = video.num_frames
            video.close()
        except (MediaReadError, OSError):
            report.unreadable += 1  # named and counted by the training loop when it reads it
            continue
        if frames == 1:
            continue  # a static clip, like an image
        report.videos_checked += 1
        if frames < report.needed_frames:
            report.too_short += 1
            if len(report.examples) < MAX_EXAMPLES:
                report.examples.append(f"{path} ({frames} frames)")
    report.seconds = round(time.perf_counter() - start, 2)
    return report


def _verdict(cfg, report: ClipLengthReport) -> ClipLengthReport:
    data = cfg.dataset
    if report.too_short == 0:
        return report
    sampled = "" if report.rows_checked == report.rows_total else f" (an evenly spaced sample of {report.rows_total})"
    counted = (f"{report.too_short} of the {report.rows_checked} rows checked{sampled} of {data.data_path} are "
               f"videos shorter than the {report.needed_frames} frames this stage reads "
               f"(dataset.num_frames={data.num_frames} × frame_interval={data.frame_interval})")
    if report.too_short * 2 > report.rows_checked:  # most rows: training would mostly skip
        raise ClipsTooShortError(
            f"{counted}, e.g. {report.examples[0]}: leave them out with `python scripts/make_csv.py <folder> "
            f"<csv> --min-frames {report.needed_frames}`, or lower dataset.num_frames")
    # The files themselves are named once, by the training loop when it skips them (and in
    # preflight.json): here only the count.
    logger.warning("%s: they will be skipped and counted (max_skip_fraction=%s); "
                   "`python scripts/make_csv.py <folder> <csv> --min-frames %d` leaves them out",
                   counted, cfg.max_skip_fraction, report.needed_frames)
    return report


def check_clip_lengths(cfg, dataset, is_main: bool = True) -> ClipLengthReport | None:
    """Rank 0 reads the frame counts of up to `preflight_rows` rows; every rank gets the verdict
    and raises `ClipsTooShortError` when most rows are too-short videos. None when switched off."""
    if not cfg.preflight_rows:
        return None
    outcome = rank0_decides(lambda: _verdict(cfg, _count_clip_lengths(dataset, cfg.preflight_rows)))
    if is_main:
        logger.info("preflight: %d of %d rows checked (%d videos) in %.1f s, %d shorter than %d frames, "
                    "%d unreadable", outcome.rows_checked, outcome.rows_total, outcome.videos_checked,
                    outcome.seconds, outcome.too_short, outcome.needed_frames, outcome.unreadable)
    return outcome


@torch.no_grad()
def spatial_psnr(vae, frames: torch.Tensor, batch_size: int = 64) -> float:
    """Mean per-frame PSNR (dB, frames in [0, 1]) of a diffusers AutoencoderKL's deterministic
    reconstruction (posterior mode) of (N, 3, H, W) frames in [-1, 1], the way the eval scores."""
    was_training = vae.training
    vae.eval()
    values = []
    for i in range(0, len(frames), batch_size):
        x = frames[i:i + batch_size]
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        values.append(psnr((x + 1) / 2, ((rec.float() + 1) / 2).clamp(0, 1)))
    vae.train(was_training)
    return float(torch.cat(values).mean())


def _clip_frames(dataset, num_clips: int) -> tuple[torch.Tensor, int]:
    """First, middle and last frame of `num_clips` evenly spaced samples (one frame of an image)."""
    frames, clips = [], 0
    for i in _row_indices(len(dataset), num_clips):
        item = dataset[int(i)]  # an unreadable row is replaced by the next readable one
        video = item["video"]
        picks = [0] if item["is_image"] else sorted({0, video.shape[1] // 2, video.shape[1] - 1})
        frames.append(video[:, picks].permute(1, 0, 2, 3))
        clips += 1
    return torch.cat(frames), clips


def check_spatial_vae(cfg, dataset, pipe, outputs: str | Path, tables: ClipLengthReport | None,
                      is_main: bool = True) -> SpatialReport | None:
    """Rank 0 reconstructs `preflight_clips` clips with the spatial VAE alone (before the model
    is wrapped for DDP/FSDP), logs the PSNR, warns loudly below `preflight_min_psnr`, and writes
    both checks to `<outputs>/preflight.json`."""
    if not is_main:
        return None
    report = None
    if cfg.preflight_clips:
        with torch.random.fork_rng(devices=[]):  # training's random streams stay as without the check
            frames, clips = _clip_frames(dataset, cfg.preflight_clips)
        device = next(pipe.parameters()).device
        vae = pipe.spatial_vae.module
        value = spatial_psnr(vae, frames.to(device), batch_size=pipe.spatial_vae.micro_batch_size or len(frames))
        report = SpatialReport(round(value, 3), float(cfg.preflight_min_psnr), clips, len(frames),
                               bool(pipe.freeze_spatial))
        logger.info("preflight: the spatial VAE alone reconstructs %d frames of %d clips at PSNR %.2f dB",
                    report.frames, report.clips, report.psnr)
        if report.below_threshold:
            bound = ("it is frozen in this stage, so every reconstruction after it is at best this good"
                     if report.frozen else "every later stage starts from it")
            logger.warning(
                "THE SPATIAL VAE CANNOT REPRESENT YOUR CLIPS: PSNR %.2f dB on %d frames of %d clips, below "
                "preflight_min_psnr=%g dB; %s. Use a spatial VAE trained on content like yours "
                "(model.spatial.from_pretrained: an SD/SDXL VAE, or --ckpt-path of a pipeline checkpoint); "
                "see README 'Training on your own data'", report.psnr, report.frames, report.clips,
                report.threshold, bound)
    result: dict[str, Any] = {
        "clip_lengths": asdict(tables) if tables is not None else None,
        "spatial_vae": ({**asdict(report), "below_threshold": report.below_threshold} if report else None),
    }
    Path(outputs, PREFLIGHT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return report
