"""Overlap-blended spatial tiling for the temporal VAE (it has no spatial resampling).

Each tile is processed independently and overlapping tiles are blended with linear ramps, so
peak activation memory is one tile's. GroupNorm statistics are then per tile, so results differ
slightly from untiled ones (measured in benchmarks/RESULTS.md); inside one tile they are exact.
"""

from __future__ import annotations

from typing import Callable

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)  # last tile flush with the border
    return sorted(set(starts))


def _ramp(length: int, overlap_before: int, overlap_after: int, device, dtype) -> torch.Tensor:
    """1 inside, rising over the overlap with the previous tile, falling over the next one."""
    w = torch.ones(length, device=device, dtype=dtype)
    if overlap_before > 0:
        w[:overlap_before] = torch.arange(1, overlap_before + 1, device=device, dtype=dtype) / (overlap_before + 1)
    if overlap_after > 0:
        w[length - overlap_after:] = torch.minimum(
            w[length - overlap_after:],
            torch.arange(overlap_after, 0, -1, device=device, dtype=dtype) / (overlap_after + 1))
    return w


def tiled_spatial_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int,
                        overlap: int) -> torch.Tensor:
    """Applies `fn` (B,C,T,h,w) → (B,C',T',h,w) on overlapping spatial tiles and blends them."""
    if overlap >= tile:
        raise ValueError(f"tile overlap ({overlap}) must be smaller than the tile ({tile})")
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    stride = tile - overlap
    ys, xs = _starts(h, tile, stride), _starts(w, tile, stride)
    out = weight = None
    for iy, y0 in enumerate(ys):
        for ix, x0 in enumerate(xs):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            part = fn(x[..., y0:y1, x0:x1])
            if out is None:
                out = torch.zeros(*part.shape[:-2], h, w, device=part.device, dtype=torch.float32)
                weight = torch.zeros(h, w, device=part.device, dtype=torch.float32)
            before_y = ys[iy - 1] + tile - y0 if iy > 0 else 0
            after_y = y1 - ys[iy + 1] if iy + 1 < len(ys) else 0
            before_x = xs[ix - 1] + tile - x0 if ix > 0 else 0
            after_x = x1 - xs[ix + 1] if ix + 1 < len(xs) else 0
            wy = _ramp(y1 - y0, max(before_y, 0), max(after_y, 0), part.device, torch.float32)
            wx = _ramp(x1 - x0, max(before_x, 0), max(after_x, 0), part.device, torch.float32)
            mask = wy[:, None] * wx[None, :]
            out[..., y0:y1, x0:x1] += part.float() * mask
            weight[y0:y1, x0:x1] += mask
    return (out / weight).to(x.dtype)
