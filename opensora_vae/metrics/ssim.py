"""Per-frame SSIM as in the reference eval (Wang et al. 2004 constants, valid region).

Per RGB channel: Gaussian window 11×11, σ = 1.5, C1 = 0.01², C2 = 0.03², float64; the SSIM map
is computed only where the window fits inside the image (a 5-pixel border is dropped), averaged,
then averaged over channels. Inside that region the padding mode of the filter plays no role,
so this equals scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` per channel on the full frame (scikit-image filters
with reflect padding and then drops the same 5-pixel border before its mean).

The 2-D Gaussian is separable, so we filter with the 1-D window along W then H. On CPU each
1-D pass is a few matrix products with a banded window matrix (numpy's BLAS, float64), one
channel plane at a time so every buffer stays in cache: 4x faster than scipy.ndimage, whose
per-line loop is not vectorised. On CUDA, float64 torch convolutions. Either way a frame's value
depends on that frame alone, bit for bit, whatever else is in the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from .protocol import check_frame_batches

WINDOW_SIZE = 11
SIGMA = 1.5
C1 = 0.01**2
C2 = 0.03**2
# CUDA: frames per chunk, in input values (big chunks keep the device busy).
_GPU_CHUNK_VALUES = 1 << 22
# CPU: output columns (rows) per matrix product of a 1-D pass. Each block multiplies
# BLOCK + 10 inputs by a (BLOCK + 10, BLOCK) band: larger blocks waste multiply-adds on zeros,
# smaller ones make the products too small for BLAS to run at speed. 32 measured fastest.
_BLAS_BLOCK = 32


def gaussian_window_1d(size: int = WINDOW_SIZE, sigma: float = SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian (same values as ``cv2.getGaussianKernel(11, 1.5)``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


class _BandFilter:
    """The valid part of the separable Gaussian filter of (..., H, W) float64 planes, as matrix
    products: ``out[:, j] = sum_k g[k] x[:, j + k]`` is ``x[:, s:s + B + 10] @ band`` for each
    block of B output columns, and likewise along H with the band transposed on the left."""

    def __init__(self, block: int = _BLAS_BLOCK):
        g = gaussian_window_1d()
        self.block = block
        self.band = np.zeros((block + WINDOW_SIZE - 1, block))
        for j in range(block):
            self.band[j : j + WINDOW_SIZE, j] = g
        self.band_t = np.ascontiguousarray(self.band.T)

    def __call__(self, planes: np.ndarray, along_w: np.ndarray, out: np.ndarray) -> np.ndarray:
        """planes (..., H, W) → out (..., H - 10, W - 10); ``along_w`` (..., H, W - 10) is scratch."""
        span, block = WINDOW_SIZE - 1, self.block
        rows, cols = planes.reshape(-1, planes.shape[-1]), along_w.reshape(-1, along_w.shape[-1])
        for s in range(0, cols.shape[1], block):
            n = min(block, cols.shape[1] - s)
            np.matmul(rows[:, s : s + n + span], self.band[: n + span, :n], out=cols[:, s : s + n])
        for s in range(0, out.shape[-2], block):
            n = min(block, out.shape[-2] - s)
            np.matmul(self.band_t[:n, : n + span], along_w[..., s : s + n + span, :], out=out[..., s : s + n, :])
        return out


def _ssim_planes_cpu(x_planes: np.ndarray, y_planes: np.ndarray) -> np.ndarray:
    """Mean SSIM of each (H, W) plane pair of (P, H, W) float32 arrays, in float64 (P,).

    Filters four moment images per plane (x, y, x² + y², xy: SSIM needs only the sum of the two
    variances) and evaluates the SSIM map in place, one plane at a time, in reused buffers."""
    filt = _BandFilter()
    h, w = x_planes.shape[-2:]
    moments = np.empty((4, h, w))
    along_w = np.empty((4, h, w - WINDOW_SIZE + 1))
    means = np.empty((4, h - WINDOW_SIZE + 1, w - WINDOW_SIZE + 1))
    num, den = np.empty(means.shape[1:]), np.empty(means.shape[1:])
    out = np.empty(x_planes.shape[0])
    x, y, sq, xy = moments
    mu_x, mu_y, e_sq, e_xy = means
    for p in range(x_planes.shape[0]):
        x[...] = x_planes[p]
        y[...] = y_planes[p]
        np.multiply(x, x, out=sq)
        np.multiply(y, y, out=xy)
        sq += xy
        np.multiply(x, y, out=xy)
        filt(moments, along_w, means)
        # num = (2 mu_x mu_y + C1)(2 cov + C2), cov = E[xy] - mu_x mu_y
        np.multiply(mu_x, mu_y, out=num)
        e_xy -= num
        e_xy *= 2
        e_xy += C2
        num *= 2
        num += C1
        num *= e_xy
        # den = (mu_x² + mu_y² + C1)(var_x + var_y + C2), var_x + var_y = E[x² + y²] - mu_x² - mu_y²
        np.multiply(mu_x, mu_x, out=den)
        np.multiply(mu_y, mu_y, out=mu_x)
        den += mu_x
        e_sq -= den
        e_sq += C2
        den += C1
        den *= e_sq
        num /= den
        out[p] = num.mean()
    return out


def _filter_valid_torch(stack: torch.Tensor) -> torch.Tensor:
    g = torch.from_numpy(gaussian_window_1d()).to(stack.device)
    shape = stack.shape
    flat = stack.reshape(-1, 1, shape[-2], shape[-1])
    flat = torch.nn.functional.conv2d(flat, g.view(1, 1, 1, -1))  # no padding = valid
    flat = torch.nn.functional.conv2d(flat, g.view(1, 1, -1, 1))
    return flat.reshape(*shape[:-2], flat.shape[-2], flat.shape[-1])


def _ssim_from_means(m):
    mu_x, mu_y, e_xx, e_yy, e_xy = m[0], m[1], m[2], m[3], m[4]
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + C1) * (2 * cov + C2)
    den = (mu_x * mu_x + mu_y * mu_y + C1) * (var_x + var_y + C2)
    return num / den


def ssim(real: torch.Tensor, fake: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """SSIM per frame. real, fake: (N, C, H, W) in [0, 1], H and W ≥ 11, on any device.

    ``backend``: "blas" (CPU tensors only) or "torch"; None picks blas on CPU, torch
    elsewhere. Returns float64 (N,) on the input device.
    """
    if backend is None:
        backend = "blas" if real.device.type == "cpu" else "torch"
    if backend not in ("blas", "torch") or (backend == "blas" and real.device.type != "cpu"):
        raise ValueError(f"SSIM backend {backend!r} is not available for device {real.device}")
    check_frame_batches(real, fake)
    if min(real.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs frames of at least {WINDOW_SIZE}x{WINDOW_SIZE}, got {tuple(real.shape[-2:])}")
    if real.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=real.device)
    with torch.no_grad():
        if backend == "blas":
            n, c, h, w = real.shape
            planes = [t.detach().reshape(n * c, h, w).numpy() for t in (real, fake)]
            return torch.from_numpy(_ssim_planes_cpu(*planes).reshape(n, c).mean(axis=1))
        step = max(1, _GPU_CHUNK_VALUES // real[0].numel())
        parts = []
        for s in range(0, real.shape[0], step):
            x, y = real[s : s + step].double(), fake[s : s + step].double()
            means = _filter_valid_torch(torch.stack([x, y, x * x, y * y, x * y]))
            parts.append(_ssim_from_means(means).mean(dim=(-2, -1)).mean(dim=-1))
        return torch.cat(parts)
