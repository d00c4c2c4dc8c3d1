"""MAGVIT-v2-style causal 3D temporal VAE of Open-Sora 1.2 (no codebook, no spatial resampling).

Module and parameter names mirror the reference `VAE_Temporal` so the released checkpoint
loads with `strict=True`; numerics are checked against reference golden outputs in the tests.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .distributions import DiagonalGaussian


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value, value)


class CausalConv3d(nn.Module):
    """3D conv that only looks back in time: zeros are padded in front of the time axis.

    Time padding is `dilation*(kt-1) + 1 - stride_t` frames (2 for k=3, 1 for k=3 stride 2),
    H and W are padded symmetrically with zeros.
    """

    def __init__(self, chan_in: int, chan_out: int, kernel_size, stride=(1, 1, 1),
                 dilation: int = 1, bias: bool = True):
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"spatial kernel sizes must be odd, got {(kh, kw)}")
        stride = _triple(stride)
        time_pad = dilation * (kt - 1) + (1 - stride[0])
        self.time_pad = time_pad
        # F.pad order: (W_left, W_right, H_top, H_bottom, T_front, T_back)
        self.padding = (kw // 2, kw // 2, kh // 2, kh // 2, time_pad, 0)
        self.conv = nn.Conv3d(chan_in, chan_out, (kt, kh, kw), stride=stride,
                              dilation=(dilation, 1, 1), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class ResBlock(nn.Module):
    """GN → SiLU → conv3 → GN → SiLU → conv3, plus identity or 1×1×1 shortcut."""

    def __init__(self, in_channels: int, filters: int, num_groups: int = 32):
        super().__init__()
        self.in_channels = in_channels
        self.filters = filters
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, filters, 3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, filters)
        self.conv2 = CausalConv3d(filters, filters, 3, bias=False)
        if in_channels != filters:
            self.conv3 = CausalConv3d(in_channels, filters, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv3(x) if self.in_channels != self.filters else x
        x = self.conv1(F.silu(self.norm1(x)))
        x = self.conv2(F.silu(self.norm2(x)))
        return x + residual


class _CheckpointedStack(nn.Module):
    """Runs ResBlocks, optionally recomputing each one's activations in backward.

    The reference's `grad_checkpoint` flag never reached the model; here it really wraps
    every ResBlock, which is where the activation memory is.
    """

    gradient_checkpointing = False

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)


class Encoder(_CheckpointedStack):
    def __init__(self, in_out_channels: int, latent_embed_dim: int, filters: int,
                 num_res_blocks: int, channel_multipliers: Sequence[int],
                 temporal_downsample: Sequence[bool], num_groups: int):
        super().__init__()
        self.num_blocks = len(channel_multipliers)
        self.num_res_blocks = num_res_blocks
        self.conv_in = CausalConv3d(in_out_channels, filters, 3, bias=False)

        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = filters
        for i, mult in enumerate(channel_multipliers):
            out = filters * mult
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(prev, out, num_groups))
                prev = out
            self.block_res_blocks.append(blocks)
            if i < self.num_blocks - 1:
                if temporal_downsample[i]:
                    self.conv_blocks.append(CausalConv3d(prev, out, 3, stride=(2, 1, 1)))
                else:
                    # Keeps indices aligned with the reference (and its checkpoint keys).
                    self.conv_blocks.append(nn.Identity())
        self.res_blocks = nn.ModuleList(ResBlock(prev, prev, num_groups) for _ in range(num_res_blocks))
        self.norm1 = nn.GroupNorm(num_groups, prev)
        self.conv2 = CausalConv3d(prev, latent_embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i in range(self.num_blocks):
            for block in self.block_res_blocks[i]:
                x = self._run(block, x)
            if i < self.num_blocks - 1:
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = self._run(block, x)
        return self.conv2(F.silu(self.norm1(x)))


class Decoder(_CheckpointedStack):
    def __init__(self, in_out_channels: int, latent_embed_dim: int, filters: int,
                 num_res_blocks: int, channel_multipliers: Sequence[int],
                 temporal_downsample: Sequence[bool], num_groups: int):
        super().__init__()
        self.num_blocks = len(channel_multipliers)
        self.temporal_downsample = tuple(bool(t) for t in temporal_downsample)
        top = filters * channel_multipliers[-1]
        self.conv1 = CausalConv3d(latent_embed_dim, top, 3)
        self.res_blocks = nn.ModuleList(ResBlock(top, top, num_groups) for _ in range(num_res_blocks))

        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = top
        for i in reversed(range(self.num_blocks)):
            out = filters * channel_multipliers[i]
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(prev, out, num_groups))
                prev = out
            self.block_res_blocks.insert(0, blocks)
            if i > 0:
                if self.temporal_downsample[i - 1]:
                    # Doubles channels, then depth-to-space in time (see _time_upsample).
                    self.conv_blocks.insert(0, CausalConv3d(prev, prev * 2, 3))
                else:
                    self.conv_blocks.insert(0, nn.Identity())
        self.norm1 = nn.GroupNorm(num_groups, prev)
        self.conv_out = CausalConv3d(prev, in_out_channels, 3)

    @staticmethod
    def _time_upsample(x: torch.Tensor) -> torch.Tensor:
        # "B (C ts) T H W -> B C (T ts) H W": frame 2t comes from channel 2c, 2t+1 from 2c+1.
        b, c2, t, h, w = x.shape
        x = x.view(b, c2 // 2, 2, t, h, w).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, c2 // 2, t * 2, h, w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for block in self.res_blocks:
            x = self._run(block, x)
        for i in reversed(range(self.num_blocks)):
            for block in self.block_res_blocks[i]:
                x = self._run(block, x)
            if i > 0:
                x = self.conv_blocks[i - 1](x)
                if self.temporal_downsample[i - 1]:
                    x = self._time_upsample(x)
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    """Causal temporal VAE. Every size is an argument: the released Open-Sora 1.2 model's (309.7 M)
    are `config.model_defaults()["temporal"]` (configs/vae/_base_/model_v1_2.py)."""

    def __init__(self, *, in_out_channels: int, latent_embed_dim: int, embed_dim: int, filters: int,
                 num_res_blocks: int, channel_multipliers: Sequence[int], temporal_downsample: Sequence[bool],
                 num_groups: int):
        super().__init__()
        if len(temporal_downsample) != len(channel_multipliers) - 1:
            raise ValueError("temporal_downsample needs one entry per level transition "
                             f"({len(channel_multipliers) - 1}), got {len(temporal_downsample)}")
        self.config = dict(
            in_out_channels=in_out_channels, latent_embed_dim=latent_embed_dim,
            embed_dim=embed_dim, filters=filters, num_res_blocks=num_res_blocks,
            channel_multipliers=list(channel_multipliers),
            temporal_downsample=[bool(t) for t in temporal_downsample], num_groups=num_groups,
        )
        self.time_downsample_factor = 2 ** sum(bool(t) for t in temporal_downsample)
        self.out_channels = in_out_channels
        self.embed_dim = embed_dim
        arch = dict(filters=filters, num_res_blocks=num_res_blocks,
                    channel_multipliers=channel_multipliers,
                    temporal_downsample=temporal_downsample, num_groups=num_groups)
        self.encoder = Encoder(in_out_channels, latent_embed_dim * 2, **arch)
        self.quant_conv = CausalConv3d(2 * latent_embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = CausalConv3d(embed_dim, latent_embed_dim, 1)
        self.decoder = Decoder(in_out_channels, latent_embed_dim, **arch)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def time_padding(self, num_frames: int) -> int:
        """Zero frames prepended so the length is a multiple of the time downsampling."""
        return (self.time_downsample_factor - num_frames % self.time_downsample_factor) \
            % self.time_downsample_factor

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        """(T, H, W) → latent (T', H, W); T' = ceil(T / 4) for the released model."""
        t, h, w = input_size
        lt = None if t is None else math.ceil(t / self.time_downsample_factor)
        return [lt, h, w]

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        pad = self.time_padding(x.shape[2])
        if pad:
            x = F.pad(x, (0, 0, 0, 0, pad, 0))
        moments = self.quant_conv(self.encoder(x)).to(x.dtype)
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, self.time_padding(num_frames):]

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z, num_frames=x.shape[2]), posterior, z
