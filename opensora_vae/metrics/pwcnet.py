"""PWC-Net optical flow (Sun et al. 2018) in plain PyTorch, for FloLPIPS.

The architecture and parameter names follow sniklaus' "pytorch-pwc" port, whose weights file
``network-default.pytorch`` the reference eval (FloLPIPS in Open-Sora / Open-Sora-Plan) loads:
a 6-level feature pyramid (``netExtractor``), decoders at levels 6..2 (``netSix`` ..
``netTwo``) with densely connected convs on a cost volume, and a dilated-conv context network
(``netRefiner``). The original computes the cost volume with a CUDA-only cupy kernel; here it
is a loop over the 81 displacements, which runs on any device.

Weights: ``--pwc_weights`` / ``$OPENSORA_VAE_PWC_WEIGHTS``, else the torch hub cache, where the
reference's ``torch.hub.load_state_dict_from_url(PWC_URL)`` puts the file. When neither names an
existing file and the user is online, :func:`build_pwcnet` downloads it from the reference's URL
into that cache (`weights.download_verified`): the file is kept only if its sha256 is the pinned
``PWC_SHA256`` (when one is pinned) and it loads with ``weights_only=True`` into this architecture
exactly (strict names and shapes).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingWeightsError
from ..weights import WeightsIntegrityError, download_verified, offline, sha256_of

logger = logging.getLogger(__name__)

# The reference's URL (Open-Sora eval/vae/flolpips/pwcnet.py, from sniklaus/pytorch-pwc run.py).
PWC_URL = "http://content.sniklaus.com/github/pytorch-pwc/network-default.pytorch"
# No public source we could find states this file's sha256 (the reference and pytorch-pwc load it
# without a hash check). Until one does, a downloaded file is verified by loading it with
# weights_only=True strictly into PWCNet, and its sha256 is logged for the user to compare.
PWC_SHA256: str | None = None
PWC_FILENAME = "network-default.pytorch"
PWC_WEIGHTS_ENV = "OPENSORA_VAE_PWC_WEIGHTS"
MAX_DISPLACEMENT = 4  # cost volume over a 9×9 neighbourhood = 81 channels
_VOLUME = (2 * MAX_DISPLACEMENT + 1) ** 2
# Channels of the pyramid levels 1..6 and of the dense decoder blocks.
_PYRAMID = [3, 16, 32, 64, 96, 128, 196]
_DENSE = [128, 128, 96, 64, 32]


def correlation(first: torch.Tensor, second: torch.Tensor, max_disp: int = MAX_DISPLACEMENT) -> torch.Tensor:
    """Cost volume: out[:, (dy+d)*(2d+1) + (dx+d), y, x] = mean_c first[c, y, x] ·
    second[c, y+dy, x+dx], zero outside ``second``. Same layout and normalisation (divide by
    the channel count) as the pytorch-pwc cupy kernel."""
    _, channels, height, width = first.shape
    padded = F.pad(second, [max_disp] * 4)
    span = 2 * max_disp + 1
    out = []
    for dy in range(span):
        rows = padded[:, :, dy : dy + height]
        for dx in range(span):
            out.append((first * rows[:, :, :, dx : dx + width]).sum(dim=1))
    return torch.stack(out, dim=1) / channels


def backwarp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at x + flow with bilinear interpolation; pixels whose footprint
    leaves the image are zeroed (the pytorch-pwc convention the weights were trained with,
    including its flow scaling by (size - 1) / 2 on a pixel-centre grid)."""
    n, _, h, w = flow.shape
    hor = torch.linspace(-1.0 + 1.0 / w, 1.0 - 1.0 / w, w, device=flow.device, dtype=flow.dtype)
    ver = torch.linspace(-1.0 + 1.0 / h, 1.0 - 1.0 / h, h, device=flow.device, dtype=flow.dtype)
    grid = torch.stack(torch.meshgrid(ver, hor, indexing="ij")[::-1], dim=0).unsqueeze(0)
    scale = torch.tensor([(image.shape[3] - 1.0) / 2.0, (image.shape[2] - 1.0) / 2.0],
                         device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    ones = flow.new_ones(n, 1, h, w)
    sampled = F.grid_sample(
        torch.cat([image, ones], dim=1),
        (grid + flow / scale).permute(0, 2, 3, 1),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    mask = (sampled[:, -1:] > 0.999).to(sampled.dtype)
    return sampled[:, :-1] * mask


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(negative_slope=0.1)


class Extractor(nn.Module):
    """Feature pyramid: each level halves the resolution with three 3×3 convs."""

    LEVEL_NAMES = ["netOne", "netTwo", "netThr", "netFou", "netFiv", "netSix"]

    def __init__(self):
        super().__init__()
        for i, name in enumerate(self.LEVEL_NAMES):
            cin, cout = _PYRAMID[i], _PYRAMID[i + 1]
            block = nn.Sequential(_conv(cin, cout, stride=2), _lrelu(), _conv(cout, cout), _lrelu(),
                                  _conv(cout, cout), _lrelu())
            setattr(self, name, block)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = []
        for name in self.LEVEL_NAMES:
            x = getattr(self, name)(x)
            levels.append(x)
        return levels


def _decoder_input_channels(level: int) -> int:
    """Cost volume, plus (below the top level) the level's features, upsampled flow and
    upsampled decoder features (2 channels each)."""
    return _VOLUME if level == 6 else _VOLUME + _PYRAMID[level] + 2 + 2


class Decoder(nn.Module):
    """Flow estimator of one pyramid level, with DenseNet-style concatenated convs."""

    DENSE_NAMES = ["netOne", "netTwo", "netThr", "netFou", "netFiv"]

    def __init__(self, level: int):
        super().__init__()
        current = _decoder_input_channels(level)
        if level < 6:
            previous = _decoder_input_channels(level + 1) + sum(_DENSE)
            self.netUpflow = nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1)
            self.netUpfeat = nn.ConvTranspose2d(previous, 2, 4, stride=2, padding=1)
            # Flow is predicted in units of 1/20 px at full resolution (hence 20 / 2**level).
            self.backwarp_scale = 20.0 / 2**level
        channels = current
        for name, out in zip(self.DENSE_NAMES, _DENSE):
            setattr(self, name, nn.Sequential(_conv(channels, out), _lrelu()))
            channels += out
        self.netSix = nn.Sequential(_conv(channels, 2))
        self.out_channels = channels

    def forward(self, first: torch.Tensor, second: torch.Tensor, previous: dict | None) -> dict:
        if previous is None:
            feat = F.leaky_relu(correlation(first, second), 0.1)
        else:
            flow = self.netUpflow(previous["flow"])
            upfeat = self.netUpfeat(previous["feat"])
            warped = backwarp(second, flow * self.backwarp_scale)
            volume = F.leaky_relu(correlation(first, warped), 0.1)
            feat = torch.cat([volume, first, flow, upfeat], dim=1)
        for name in self.DENSE_NAMES:
            feat = torch.cat([getattr(self, name)(feat), feat], dim=1)
        return {"flow": self.netSix(feat), "feat": feat}


class Refiner(nn.Module):
    """Context network: dilated convs (1, 2, 4, 8, 16, 1) adding a residual to the flow."""

    def __init__(self, in_channels: int):
        super().__init__()
        spec = [(128, 1), (128, 2), (128, 4), (96, 8), (64, 16), (32, 1)]
        layers, cin = [], in_channels
        for cout, dilation in spec:
            layers += [_conv(cin, cout, dilation=dilation), _lrelu()]
            cin = cout
        layers.append(_conv(cin, 2))
        self.netMain = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.netMain(x)


class PWCNet(nn.Module):
    """Flow from ``first`` to ``second`` (both (N, 3, H, W) in [0, 1]) in pixels, (N, 2, H, W)
    with x then y displacement. Inputs are resized to multiples of 64 as in the reference."""

    def __init__(self):
        super().__init__()
        self.netExtractor = Extractor()
        self.netTwo = Decoder(2)
        self.netThr = Decoder(3)
        self.netFou = Decoder(4)
        self.netFiv = Decoder(5)
        self.netSix = Decoder(6)
        self.netRefiner = Refiner(self.netTwo.out_channels)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        height, width = first.shape[-2:]
        padded_h = int(math.ceil(height / 64.0) * 64)
        padded_w = int(math.ceil(width / 64.0) * 64)
        pair = torch.cat([first, second], dim=0)
        pair = F.interpolate(pair, size=(padded_h, padded_w), mode="bilinear", align_corners=False)
        # One pass over both images: the extractor is per-image, batching halves the calls.
        pyramid = [level.chunk(2, dim=0) for level in self.netExtractor(pair)]
        estimate = None
        for index, decoder in zip(range(5, 0, -1), [self.netSix, self.netFiv, self.netFou, self.netThr, self.netTwo]):
            feats_first, feats_second = pyramid[index]
            estimate = decoder(feats_first, feats_second, estimate)
        flow = estimate["flow"] + self.netRefiner(estimate["feat"])
        flow = 20.0 * F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
        ratio = torch.tensor([width / padded_w, height / padded_h], device=flow.device, dtype=flow.dtype)
        return flow * ratio.view(1, 2, 1, 1)


def hub_pwc_weights_path() -> Path:
    """Where the reference's ``torch.hub.load_state_dict_from_url(PWC_URL)`` caches the file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PWC_FILENAME


def default_pwc_weights_path() -> Path:
    """``$OPENSORA_VAE_PWC_WEIGHTS`` or the torch hub cache (:func:`hub_pwc_weights_path`)."""
    env = os.environ.get(PWC_WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return hub_pwc_weights_path()


def load_pwc_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    # Older releases of the file name the modules "moduleExtractor", "moduleSix", ...
    return {key.replace("module", "net"): value for key, value in state.items()}


def _check_pwc_file(path: Path) -> None:
    """A downloaded file is kept only if it is PWCNet's weights: tensors only, every name and shape."""
    try:
        PWCNet().load_state_dict(load_pwc_state_dict(path), strict=True)
    except Exception as err:  # unpickling refused, not a dict, missing keys, wrong shapes
        raise WeightsIntegrityError(f"download of {PWC_URL} refused: not the PWC-Net weights this code "
                                    f"loads ({type(err).__name__}: {str(err)[:200]})") from err


def fetch_pwc_weights(dest: Path) -> Path:
    """Download the reference's PWC-Net weights to ``dest`` (verified, see the module docstring)."""
    logger.info("downloading PWC-Net weights for FloLPIPS from %s to %s", PWC_URL, dest)
    download_verified(PWC_URL, dest, sha256=PWC_SHA256, check=_check_pwc_file)
    logger.info("PWC-Net weights saved to %s (sha256 %s)", dest, sha256_of(dest))
    return dest


def build_pwcnet(weights: str | os.PathLike | None = None, allow_random: bool = False) -> PWCNet:
    """PWC-Net in eval mode with gradients off, loaded from ``weights`` (default:
    :func:`default_pwc_weights_path`, downloaded into the torch hub cache on first use when
    online). ``allow_random`` (tests only) keeps random weights when no file exists."""
    net = PWCNet()
    path = Path(weights).expanduser() if weights is not None else default_pwc_weights_path()
    failure = ""
    # Downloaded only into the hub cache, where nobody named a file: a path the user gave that
    # does not exist is their mistake to hear about, not something to fill from the network.
    if (not path.is_file() and weights is None and not allow_random and not os.environ.get(PWC_WEIGHTS_ENV)
            and not offline()):
        try:
            fetch_pwc_weights(path)
        except OSError as err:  # unreachable, refused, interrupted: offline in effect
            failure = f" (downloading it failed: {err})"
    if path.is_file():
        net.load_state_dict(load_pwc_state_dict(path), strict=True)
    elif weights is not None or not allow_random:
        raise MissingWeightsError(
            f"PWC-Net weights not found at {path}{failure}. FloLPIPS needs the original pytorch-pwc "
            f"weights '{PWC_FILENAME}' ({PWC_URL}): download it to {hub_pwc_weights_path()}, or pass "
            f"--pwc_weights PATH / set ${PWC_WEIGHTS_ENV}."
        )
    return net.eval().requires_grad_(False)
