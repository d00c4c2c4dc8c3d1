"""Per-frame SSIM as in the reference eval (Wang et al. 2004 constants, valid region).

Per RGB channel: Gaussian window 11×11, σ = 1.5, C1 = 0.01², C2 = 0.03², float64; the SSIM map
is computed only where the window fits inside the image (a 5-pixel border is dropped), averaged,
then averaged over channels. Inside that region the padding mode of the filter plays no role,
so this equals scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` per channel on the full frame (scikit-image filters
with reflect padding and then drops the same 5-pixel border before its mean).

The 2-D Gaussian is separable, so we filter with the 1-D window along W then H: on CPU with
scipy (float64, all frames, channels and the five moment images in one call), on CUDA with
float64 torch convolutions.
"""

from __future__ import annotations

import numpy as np
import torch

from .protocol import check_frame_batches

WINDOW_SIZE = 11
SIGMA = 1.5
C1 = 0.01**2
C2 = 0.03**2
_BORDER = WINDOW_SIZE // 2
# Frames are processed in chunks of about this many input values. On CPU, small chunks keep
# every float64 temporary (5 moment images) under glibc's 32 MB mmap threshold, so buffers are
# reused instead of page-faulted in anew: ~2x faster than one big batch. On GPU, big chunks.
_CPU_CHUNK_VALUES = 1 << 19
_GPU_CHUNK_VALUES = 1 << 22


def gaussian_window_1d(size: int = WINDOW_SIZE, sigma: float = SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian (same values as ``cv2.getGaussianKernel(11, 1.5)``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid_cpu(stack: np.ndarray) -> np.ndarray:
    from scipy import ndimage  # here: a PSNR-only eval does not pay scipy's import

    g = gaussian_window_1d()
    b = _BORDER
    # Filter along W, keep the valid columns, then along H and keep the valid rows: the mode
    # only affects the dropped border, and cropping in between saves work.
    out = ndimage.correlate1d(stack, g, axis=-1, mode="reflect")[..., b:-b]
    return ndimage.correlate1d(out, g, axis=-2, mode="reflect")[..., b:-b, :]


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

    ``backend``: "scipy" (CPU tensors only) or "torch"; None picks scipy on CPU, torch
    elsewhere. Returns float64 (N,) on the input device.
    """
    if backend is None:
        backend = "scipy" if real.device.type == "cpu" else "torch"
    if backend not in ("scipy", "torch") or (backend == "scipy" and real.device.type != "cpu"):
        raise ValueError(f"SSIM backend {backend!r} is not available for device {real.device}")
    check_frame_batches(real, fake)
    if min(real.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs frames of at least {WINDOW_SIZE}x{WINDOW_SIZE}, got {tuple(real.shape[-2:])}")
    if real.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=real.device)
    budget = _CPU_CHUNK_VALUES if backend == "scipy" else _GPU_CHUNK_VALUES
    step = max(1, budget // real[0].numel())
    with torch.no_grad():
        if backend == "scipy":
            x_all, y_all = real.detach().numpy(), fake.detach().numpy()
            out = np.empty(real.shape[0])
            for s in range(0, real.shape[0], step):
                x, y = x_all[s : s + step].astype(np.float64), y_all[s : s + step].astype(np.float64)
                means = _filter_valid_cpu(np.stack([x, y, x * x, y * y, x * y]))
                out[s : s + step] = _ssim_from_means(means).mean(axis=(-2, -1)).mean(axis=-1)
            return torch.from_numpy(out)
        parts = []
        for s in range(0, real.shape[0], step):
            x, y = real[s : s + step].double(), fake[s : s + step].double()
            means = _filter_valid_torch(torch.stack([x, y, x * x, y * y, x * y]))
            parts.append(_ssim_from_means(means).mean(dim=(-2, -1)).mean(dim=-1))
        return torch.cat(parts)
