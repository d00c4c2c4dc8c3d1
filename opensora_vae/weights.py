"""Pretrained weights of third-party networks (LPIPS backbones, I3D): where the converted files
live, and loading a downloaded ``.pth`` without letting its pickle run code.

Converted files (safetensors, written by ``python tools/install_weights.py``) live in one folder,
:func:`weights_dir`. The environment variable keeps its historical name: it was the LPIPS
backbones' folder before the I3D joined them, and existing installs must keep being found.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import UserError

WEIGHTS_DIR_ENV = "OPENSORA_VAE_LPIPS_DIR"
INSTALL_COMMAND = "python tools/install_weights.py"


class WeightsIntegrityError(UserError, ValueError):
    """A weights file that is not the file it claims to be (wrong sha256, or a pickle that is not
    plain tensors): it is refused before anything in it is used."""


def weights_dir() -> Path:
    """Folder of converted weights: ``$OPENSORA_VAE_LPIPS_DIR`` or the user cache."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "opensora_vae" / "lpips_backbones"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

