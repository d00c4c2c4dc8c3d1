"""FloLPIPS (Danier et al. 2022): LPIPS pooled where the motion of the two videos differs.

For each pair of consecutive frames t, t+1 (as in the Open-Sora / Open-Sora-Plan eval):
``flow_real = PWC(real_t, real_t+1)``, ``flow_fake = PWC(fake_t, fake_t+1)``. Each AlexNet
layer's LPIPS distance map between real_t and fake_t (after the linear calibration layer, at
the layer's own resolution) is pooled with weights ``|d| / sum|d|``, where ``d`` is the flow
difference ``flow_real - flow_fake`` resized bilinearly to that layer's resolution and
``|d|`` its per-pixel L2 norm; the five pooled values are summed. A video of T frames gives
T - 1 values.

Zero flow difference: the reference divides by ``sum|d| = 0`` and returns NaN. We use uniform
weights for such a layer instead, i.e. the plain spatial mean of its LPIPS map, so the value
degrades to ordinary LPIPS (and is exactly 0 when the frames are identical). It is never NaN.
"""

from __future__ import annotations

import os
from typing import Sequence

import lpips
import torch
import torch.nn.functional as F
from torch import nn

from ..lpips import build_lpips
from .protocol import check_frame_batches
from .pwcnet import PWCNet, build_pwcnet


def flow_weighted_average(dist_map: torch.Tensor, flow_diff: torch.Tensor) -> torch.Tensor:
    """Pool (N, 1, h, w) distances with weights ∝ the L2 norm of the (N, 2, H, W) flow
    difference resized to (h, w). Uniform weights where that norm sums to zero."""
    h, w = dist_map.shape[-2:]
    diff = F.interpolate(flow_diff, size=(h, w), mode="bilinear", align_corners=False)
    magnitude = torch.sqrt(diff[:, 0:1] ** 2 + diff[:, 1:2] ** 2)
    total = magnitude.sum(dim=(1, 2, 3), keepdim=True)
    uniform = torch.full_like(magnitude, 1.0 / (h * w))
    weights = torch.where(total > 0, magnitude / total.clamp_min(torch.finfo(total.dtype).tiny), uniform)
    return (dist_map * weights).sum(dim=(1, 2, 3))


class FloLPIPS(nn.Module):
    """FloLPIPS of consecutive frame pairs. Uses lpips's AlexNet v0.1 calibration
    (byte-identical to FloLPIPS's own ``alex.pth``) and PWC-Net flow."""

    def __init__(self, lpips_model: lpips.LPIPS | None = None, flownet: PWCNet | None = None,
                 pwc_weights: str | os.PathLike | None = None):
        super().__init__()
        self.lpips = lpips_model if lpips_model is not None else build_lpips("alex")
        if self.lpips.pnet_type != "alex" or self.lpips.version != "0.1":
            raise ValueError("FloLPIPS is defined with LPIPS AlexNet v0.1")
        self.flownet = flownet if flownet is not None else build_pwcnet(pwc_weights)

    def layer_distances(self, real: torch.Tensor, fake: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer calibrated LPIPS maps (N, 1, h_l, w_l) of [0, 1] frames."""
        model = self.lpips
        feats_real = model.net(model.scaling_layer(real * 2 - 1))
        feats_fake = model.net(model.scaling_layer(fake * 2 - 1))
        maps = []
        for layer, (a, b) in enumerate(zip(feats_real, feats_fake)):
            diff = (lpips.normalize_tensor(a) - lpips.normalize_tensor(b)) ** 2
            maps.append(model.lins[layer](diff))
        return maps

    @torch.no_grad()
    def forward(self, real_t: torch.Tensor, real_next: torch.Tensor,
                fake_t: torch.Tensor, fake_next: torch.Tensor) -> torch.Tensor:
        """Each (N, 3, H, W) in [0, 1]; returns (N,) FloLPIPS of the pairs (t, t+1)."""
        check_frame_batches(real_t, fake_t)
        check_frame_batches(real_t, real_next)
        check_frame_batches(fake_t, fake_next)
        flow_diff = self.flownet(real_t, real_next) - self.flownet(fake_t, fake_next)
        maps = self.layer_distances(real_t, fake_t)
        return sum(flow_weighted_average(m, flow_diff) for m in maps)

    def video(self, real: torch.Tensor, fake: torch.Tensor, starts: Sequence[int] | None = None,
              batch_size: int = 16) -> torch.Tensor:
        """FloLPIPS of the frame pairs (i, i+1) of (T, 3, H, W) frames in [0, 1], ``batch_size``
        pairs per call: every pair of one video (``starts`` None: T - 1 values, none for T < 2),
        or the pairs starting at ``starts`` (several videos' frames concatenated)."""
        check_frame_batches(real, fake)
        if starts is None:
            starts = range(real.shape[0] - 1)
        starts = torch.as_tensor(list(starts), dtype=torch.long, device=real.device)
        if starts.numel() == 0:
            return real.new_zeros(0)
        return torch.cat([self(real[idx], real[idx + 1], fake[idx], fake[idx + 1])
                          for idx in starts.split(batch_size)])
