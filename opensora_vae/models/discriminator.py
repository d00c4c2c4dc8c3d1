"""The 3D StyleGAN discriminator of the Open-Sora 1.2 adversarial phase (MAGVIT-v2's).

Module and buffer names mirror the reference `StyleGANDiscriminatorBlur`
(`opensora/models/vae/discriminator.py`, v1.2.0), so a reference-format discriminator state dict
loads with `strict=True`; outputs equal the reference's for the same weights (tested against
golden outputs of the reference code). The reference file calls an undefined `get_pad_layer`;
its pad type "reflect" is antialiased-cnns' reflection padding, which is what `BlurPool3D` uses here.

The flatten before `linear1` fixes the clip length and the image size: the discriminator judges
windows of exactly `num_frames` frames of `image_size`. `fit_clip_length` is the policy that makes
every training clip such a window (see its docstring).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import _size2

LEAKY_SLOPE = 0.2
# The reference's ResBlockDown is built without its num_groups: the blocks always use 32 groups,
# only the final norm uses the constructor's num_groups. Kept, so the outputs stay the reference's.
BLOCK_NUM_GROUPS = 32


def xavier_uniform_init(module: nn.Module) -> None:
    """The reference init: xavier-uniform with ReLU gain for every Conv3d/Linear, zero bias."""
    if isinstance(module, (nn.Conv3d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("relu"))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class BlurPool3D(nn.Module):
    """Anti-aliased downsampling (Zhang 2019) in T, H and W: reflection pad 1, depthwise
    [1,2,1]⊗[1,2,1]⊗[1,2,1]/64, stride 2. Each axis needs at least 2 samples (reflection)."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None, None] * taps[None, :, None] * taps[None, None, :]
        # A persistent buffer: it is part of the reference's state dict (`...blur.filt`).
        self.register_buffer("filt", (kernel / kernel.sum())[None, None].repeat(channels, 1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1, 1, 1), mode="reflect")
        return F.conv3d(x, self.filt.to(x.dtype), stride=self.stride, groups=x.shape[1])


class ResBlockDown(nn.Module):
    """conv1 3³ (in→in) → GN → act → blur → conv3 3³ (in→out) → GN → act, plus the residual
    blur → conv2 1³ (in→out, no bias); the sum is divided by √2."""

    def __init__(self, in_channels: int, filters: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, in_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(BLOCK_NUM_GROUPS, in_channels)
        self.blur = BlurPool3D(in_channels)
        self.conv2 = nn.Conv3d(in_channels, filters, 1, bias=False)
        self.conv3 = nn.Conv3d(in_channels, filters, 3, padding=1)
        self.norm2 = nn.GroupNorm(BLOCK_NUM_GROUPS, filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(self.blur(x))
        x = F.leaky_relu(self.norm1(self.conv1(x)), LEAKY_SLOPE)
        x = F.leaky_relu(self.norm2(self.conv3(self.blur(x))), LEAKY_SLOPE)
        return (residual + x) / math.sqrt(2)


class StyleGANDiscriminator3D(nn.Module):
    """`(B, in_channels, num_frames, H, W)` clips → `(B, 1)` logits (real > fake)."""

    def __init__(self, image_size: int | Sequence[int], num_frames: int, in_channels: int = 3,
                 filters: int = 128, channel_multipliers: Sequence[int] = (2, 4, 4, 4, 4),
                 num_groups: int = 32):
        super().__init__()
        self.image_size = _size2(image_size)
        self.num_frames = int(num_frames)
        self.in_channels = in_channels
        self.num_blocks = len(channel_multipliers)
        check_discriminator_input_size(self.image_size, self.num_frames, self.num_blocks)
        self.conv1 = nn.Conv3d(in_channels, filters, 3, padding=1)
        prev = filters
        self.res_block_list = nn.ModuleList()
        for multiplier in channel_multipliers:
            self.res_block_list.append(ResBlockDown(prev, filters * multiplier))
            prev = filters * multiplier
        self.conv2 = nn.Conv3d(prev, prev, 3, padding=1)
        self.norm1 = nn.GroupNorm(num_groups, prev)
        scale = 2 ** self.num_blocks
        # Each BlurPool3D maps a length n to ceil(n / 2).
        t_out = -(-self.num_frames // scale)
        h_out, w_out = self.image_size[0] // scale, self.image_size[1] // scale
        self.linear1 = nn.Linear(prev * t_out * h_out * w_out, prev)
        self.linear2 = nn.Linear(prev, 1)
        self.apply(xavier_uniform_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.num_frames, *self.image_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"the discriminator takes (B, C, T, H, W) clips of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}: pass clips through fit_clip_length first")
        x = F.leaky_relu(self.conv1(x), LEAKY_SLOPE)
        for block in self.res_block_list:
            x = block(x)
        x = F.leaky_relu(self.norm1(self.conv2(x)), LEAKY_SLOPE)
        x = F.leaky_relu(self.linear1(x.flatten(1)), LEAKY_SLOPE)
        return self.linear2(x)


def check_discriminator_input_size(image_size: Sequence[int], num_frames: int, num_blocks: int) -> None:
    """Raises ValueError unless `num_blocks` blur downsamplings work on such clips: H and W divisible
    by 2^num_blocks (the reference's rule) and more than 2^(num_blocks-1) frames, since reflection
    padding needs 2 frames still at the last block."""
    scale = 2 ** num_blocks
    if any(s % scale for s in image_size):
        raise ValueError(f"the discriminator's image size {tuple(image_size)} must be divisible by "
                         f"2^{num_blocks} = {scale} (one halving per channel multiplier)")
    if num_frames <= scale // 2:
        raise ValueError(f"the discriminator needs windows of more than {scale // 2} frames with "
                         f"{num_blocks} blocks (reflection padding at the last block), got {num_frames}")


def fit_clip_length(video: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The clip-length policy: the discriminator judges fixed windows of `num_frames` frames.

    Stage 3 trains on random prefixes of 1..num_frames frames and on 1-frame images; a shorter
    clip is padded by repeating its last frame (an image becomes a still clip, as the data loader
    tiles images), so every step has an adversarial term and real and fake are padded alike. The
    gradient of the padded copies flows back to the last frame. Longer clips are an error: the
    window is the training clip length (dataset.num_frames).
    """
    t = video.shape[2]
    if t > num_frames:
        raise ValueError(f"a {t}-frame clip is longer than the discriminator's {num_frames}-frame window")
    if t == num_frames:
        return video
    return torch.cat([video, video[:, :, -1:].expand(-1, -1, num_frames - t, -1, -1)], dim=2)
