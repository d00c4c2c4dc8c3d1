"""The eval frame protocol, in one place: which frames, how they are preprocessed, which files
are compared. Used by the eval (`evaluate.py`) and by inference (`inference/dataset.py` takes its
clips with `frame_indices`, so a reconstruction and its eval see the same frames).

- Frames 0, s, 2s, ... (``num_frames`` of them, stride ``s``: the eval's ``--sample_rate``, the
  inference config's ``frame_interval``), keeping those the video has.
- RGB in [0, 1], short side resized to ``resolution`` with
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` on float32 frames and
  no antialiasing (what the reference's pytorchvideo ``ShortSideScale`` does; new long side
  = floor(long / short · resolution)), then a centre crop of ``crop_size`` (offsets rounded as
  torchvision's ``CenterCropVideo``). Metrics take such frames as (N, 3, H, W) batches, checked
  by `check_frame_batches`.
- Files of the two folders are paired by name without extension (``a.mov`` ↔ ``a.mp4``).

Differences from the reference, on purpose: files are paired by name, not by sorted position;
frames are taken with an exact stride (the reference spread them with
``np.linspace(0, s·n - 1, n)``, the same for stride 1); bad input raises a clear error.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.video_io import is_image, is_video
from ..errors import UserError

logger = logging.getLogger(__name__)


class EvalError(UserError, ValueError):
    """Eval settings or media that cannot be scored (mismatched pairs, empty folders, bad flags)."""


@dataclass
class MediaPair:
    name: str
    real: Path
    generated: Path


# How frames are spread over the window: an exact stride (ours), or the Open-Sora-Plan eval's
# ``np.linspace(0, s*n - 1, n).astype(int)`` (the same for stride 1).
SPREADS = ("stride", "linspace")
# FVD's I3D input: each frame stretched to 224x224 (the TF-Hub I3D's own resize, what StyleGAN-V
# calls with resize=True), or the short side resized to 224 (ceil) and centre-cropped (the
# StyleGAN-V port that Open-Sora-Plan's eval calls with resize=False after its own preprocess).
FVD_INPUTS = ("stretch", "short_side_crop")
# FVD over all videos at once (one set statistic), or Open-Sora-Plan's: over mini-batches of
# ``batch_size`` videos in pair order, each the mean over clip lengths 10..T of the FVD of the
# first t frames, then the mean over mini-batches.
FVD_AVERAGING = ("set", "minibatch_cliplengths")
# The reported mean: over all (video, frame) pairs, or Open-Sora-Plan's mean over
# (mini-batch, frame index) of the mean over the mini-batch's videos at that index.
MEANS = ("all_pairs", "minibatch_frame")


@dataclass(frozen=True)
class ProtocolCard:
    """Every choice an eval protocol makes; the results JSON carries it as ``protocol``."""

    name: str
    source: str
    frame_spread: str
    frame_indices: str  # formatted with num_frames, sample_rate, last
    resize: str
    crop: str
    value_range: str
    pairing: str
    ssim: str
    psnr: str
    lpips: str
    flolpips: str
    mean: str
    aggregation: str  # MEANS
    fvd: str
    fvd_input: str
    fvd_frames: str
    fvd_min_frames: int
    fvd_averaging: str
    defaults: dict[str, Any] = field(default_factory=dict)  # EvalSettings values unless a flag is given
    fixed: dict[str, Any] = field(default_factory=dict)     # EvalSettings values no flag may change
    fixed_why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


_SHORT_SIDE = ("short side to `resolution`, torch interpolate bilinear align_corners=False, no antialias, "
               "float32 [0,1] (new long side = floor(long / short * resolution))")
_SSIM = "per channel, gaussian 11x11 sigma 1.5, C1=0.01^2, C2=0.03^2, float64, valid region, mean"
_PSNR = "per frame: 20*log10(1/sqrt(mse)), mse over C*H*W in float64, 100 if mse < 1e-10"
_LPIPS = "lpips AlexNet v0.1, inputs in [-1,1], mean of the spatial distance map, per frame"
_FLOLPIPS = ("AlexNet v0.1 layer maps pooled by |flow(real_t,real_t+1) - flow(gen_t,gen_t+1)| (PWC-Net); "
             "uniform weights where the flows agree exactly; per consecutive frame pair")
_I3D = ("Kinetics-400 RGB I3D (TF-Hub i3d-kinetics-400/1 weights) pre-softmax logits (400), input in [-1,1]; "
        "Frechet distance: covariances np.cov ddof 1, float64, Tr((S1 S2)^1/2) as the sum of the singular "
        "values of A B^T/sqrt((n1-1)(n2-1)) (A, B: centred features), clamped at 0")

PROTOCOL_CARDS: dict[str, ProtocolCard] = {
    "opensora": ProtocolCard(
        name="opensora",
        source="hpcaitech/Open-Sora v1.2.0 eval/vae/eval_common_metric.py (numbers reproduced exactly), plus rFVD",
        frame_spread="stride",
        frame_indices="0, {sample_rate}, ..., {last} (fewer if the video is shorter)",
        resize=_SHORT_SIDE, crop="centre crop `crop_size` (torchvision CenterCropVideo offsets)",
        value_range="[0,1] float32", pairing="by file name without extension",
        ssim=_SSIM, psnr=_PSNR, lpips=_LPIPS, flolpips=_FLOLPIPS,
        mean="all (video, frame) pairs (FloLPIPS: all consecutive frame pairs)", aggregation="all_pairs",
        fvd="Kinetics-400 RGB I3D logits (400) of the first 16 evaluated frames resized to 224x224 "
            "(bilinear, no antialias) in [-1,1]; Frechet distance of the real vs generated sets "
            "(np.cov ddof 1, float64, trace of the square root from singular values, clamped at 0); "
            "a set statistic over all videos",
        fvd_input="stretch", fvd_frames="first 16 evaluated frames", fvd_min_frames=16, fvd_averaging="set",
    ),
    "styleganv": ProtocolCard(
        name="styleganv",
        source="universome/stylegan-v src/metrics/frechet_video_distance.py (what TokenBench uses)",
        frame_spread="stride",
        frame_indices="0, 1, ..., 15: 16 consecutive frames from the first (StyleGAN-V samples clips of 16 "
                      "frames, subsample_factor 1; a reconstruction eval takes them from frame 0)",
        resize="none unless `resolution` is given (StyleGAN-V evaluates videos at their stored resolution)",
        crop="none unless `crop_size` is given", value_range="uint8 frames scaled to [0,1]; I3D input [-1,1]",
        pairing="by file name without extension",
        ssim=_SSIM, psnr=_PSNR, lpips=_LPIPS, flolpips=_FLOLPIPS,
        mean="all (video, frame) pairs (FloLPIPS: all consecutive frame pairs)", aggregation="all_pairs",
        fvd=_I3D + "; frames stretched to 224x224 (TF-Hub I3D resize=True, rescale=True); one set statistic "
                   "over all videos",
        fvd_input="stretch", fvd_frames="16", fvd_min_frames=16, fvd_averaging="set",
        defaults={"num_frames": 16, "sample_rate": 1, "resolution": None, "crop_size": None},
        fixed={"num_frames": 16, "sample_rate": 1},
        fixed_why="StyleGAN-V's FVD is computed on 16 consecutive frames",
    ),
    "osp": ProtocolCard(
        name="osp",
        source="PKU-YuanGroup/Open-Sora-Plan opensora/eval/eval_common_metric.py + cal_fvd.py "
               "(common_metrics_on_video_quality, method styleganv)",
        frame_spread="linspace",
        frame_indices="np.linspace(0, {sample_rate}*{num_frames} - 1, {num_frames}).astype(int); a shorter video: "
                      "int(total / ({sample_rate}*{num_frames}) * {num_frames}) frames spread over 0..total-1",
        resize=_SHORT_SIDE + " (pytorchvideo ShortSideScale)",
        crop="centre crop `crop_size` (torchvision CenterCropVideo)", value_range="[0,1] float32",
        pairing="by file name without extension (Open-Sora-Plan pairs by sorted position)",
        ssim=_SSIM, psnr=_PSNR, lpips=_LPIPS, flolpips=_FLOLPIPS,
        mean="per mini-batch of `batch_size` videos (pair order) and frame index, the mean over the mini-batch's "
             "videos; then the mean of those", aggregation="minibatch_frame",
        fvd=_I3D + "; per clip length t = 10..T, the first t frames, short side resized to 224 (ceil, bilinear) "
                   "and centre-cropped to 224x224; per mini-batch of `batch_size` videos the mean over t of the "
                   "FVD of the mini-batch (a single video: the mean term only), then the mean over mini-batches",
        fvd_input="short_side_crop", fvd_frames="10..T (every clip length)", fvd_min_frames=10,
        fvd_averaging="minibatch_cliplengths",
    ),
}


def frame_indices(num_frames: int, sample_rate: int, available: int | None = None,
                  spread: str = "stride") -> list[int]:
    """The evaluated frames of a video of ``available`` frames (None: unlimited).

    ``stride``: 0, s, 2s, ... (``num_frames`` of them), keeping those below ``available``.
    ``linspace``: Open-Sora-Plan's spread (see PROTOCOL_CARDS["osp"])."""
    if num_frames < 1 or sample_rate < 1:
        raise EvalError(f"num_frames and sample_rate must be >= 1, got {num_frames}, {sample_rate}")
    window = num_frames * sample_rate
    if spread == "linspace":
        if available is None or available >= window:
            return [int(i) for i in np.linspace(0, window - 1, num_frames).astype(int)]
        count = int(available / window * num_frames)
        return [int(i) for i in np.linspace(0, available - 1, count).astype(int)]
    stop = window if available is None else min(window, available)
    return list(range(0, stop, sample_rate))


def preprocess(frames: np.ndarray, resolution: int | None, crop_size: int | None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (T, H, W, 3) → float32 (T, 3, h, w) in [0, 1]: short-side resize, centre crop."""
    if not frames.flags.writeable:  # PIL-backed arrays are read-only; torch wants writable
        frames = frames.copy()
    x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    if resolution is not None:
        if w < h:
            size = (int(math.floor(h / w * resolution)), resolution)
        else:
            size = (resolution, int(math.floor(w / h * resolution)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if crop_size is not None:
        h, w = x.shape[-2:]
        if crop_size > min(h, w):
            raise EvalError(f"crop_size {crop_size} is larger than the resized frame {h}x{w}")
        top, left = int(round((h - crop_size) / 2.0)), int(round((w - crop_size) / 2.0))
        x = x[..., top : top + crop_size, left : left + crop_size]
    return x.contiguous()


def check_frame_batches(real: torch.Tensor, fake: torch.Tensor) -> None:
    """Metric inputs: two (N, C, H, W) batches of the same shape."""
    if real.shape != fake.shape:
        raise ValueError(f"frame shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    if real.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) frames, got {tuple(real.shape)}")


# Written by inference into each output folder before its first sample and removed after its
# report (`inference.outputs.OutputLayout`): a folder holding it may mix two runs' samples.
INCOMPLETE_MARKER = ".inference_incomplete.json"


def refuse_incomplete(folder: Path) -> None:
    """An EvalError if ``folder`` is the output of an inference run that did not finish."""
    marker = folder / INCOMPLETE_MARKER
    if not marker.is_file():
        return
    try:
        planned = f" of {int(json.loads(marker.read_text())['planned_samples'])}"
    except (OSError, ValueError, KeyError, TypeError):
        planned = ""
    written = len({p.stem for p in folder.iterdir() if not p.name.startswith(".") and (is_video(p) or is_image(p))})
    raise EvalError(f"{folder} is the output of an inference run that did not finish ({written}{planned} samples "
                    f"written, maybe beside an earlier run's): rerun the inference, or delete {marker} to score "
                    f"these samples anyway")


def list_media(folder: Path) -> dict[str, Path]:
    """Videos and images of ``folder`` by name without extension (hidden files skipped); a folder
    of an unfinished inference run is refused (`refuse_incomplete`)."""
    if not folder.is_dir():
        raise EvalError(f"not a folder: {folder}")
    refuse_incomplete(folder)
    media, ignored = {}, []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not (is_video(path) or is_image(path)):
            ignored.append(path.name)
            continue
        if path.stem in media:
            raise EvalError(f"{folder}: '{media[path.stem].name}' and '{path.name}' have the same name; "
                            f"files are paired by name without extension")
        media[path.stem] = path
    if ignored:
        logger.warning("%s: ignoring %d non-media file(s): %s", folder, len(ignored), ", ".join(ignored[:5]))
    if not media:
        raise EvalError(f"no video or image files in {folder}")
    return media


def pair_files(real_dir: str | os.PathLike, generated_dir: str | os.PathLike) -> list[MediaPair]:
    """Pair files by name without extension (``a.mov`` ↔ ``a.mp4``); sorted by name."""
    real, generated = list_media(Path(real_dir)), list_media(Path(generated_dir))
    only_real = sorted(set(real) - set(generated))
    only_generated = sorted(set(generated) - set(real))
    if only_real or only_generated:
        def show(names: list[str]) -> str:
            return ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "") or "-"
        raise EvalError(
            f"real and generated folders do not hold the same names.\n"
            f"  missing in {generated_dir}: {show(only_real)}\n"
            f"  missing in {real_dir}: {show(only_generated)}"
        )
    return [MediaPair(name, real[name], generated[name]) for name in sorted(real)]
