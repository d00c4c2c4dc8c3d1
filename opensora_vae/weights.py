"""Pretrained weights of third-party networks (LPIPS backbones, I3D): where the converted files
live, and loading a downloaded ``.pth`` without letting its pickle run code.

Converted files (safetensors, written by ``python tools/install_weights.py``) live in one folder,
:func:`weights_dir`. The environment variable keeps its historical name: it was the LPIPS
backbones' folder before the I3D joined them, and existing installs must keep being found.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import torch

from .errors import UserError

WEIGHTS_DIR_ENV = "OPENSORA_VAE_LPIPS_DIR"
INSTALL_COMMAND = "python tools/install_weights.py"
# torch.hub's convention: `name-<first hex digits of the file's sha256>.ext`.
_HUB_HASH = re.compile(r"-([a-f0-9]{8,})\.")


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


def load_hub_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torch hub checkpoint (``alexnet-owt-7be5be79.pth``) as a state dict, safely.

    torchvision checks the sha256 prefix in the name only when it downloads, and then unpickles
    with ``weights_only=False``, so a file planted in a (shared) hub cache runs code. Here the
    prefix is checked on every load, and the pickle is read with ``weights_only=True``, which
    builds tensors and containers only.
    """
    path = Path(path)
    match = _HUB_HASH.search(path.name)
    if match is None:
        raise WeightsIntegrityError(f"{path}: the file name has no '-<sha256 prefix>.' part to verify it by")
    digest = sha256_of(path)
    if not digest.startswith(match.group(1)):
        raise WeightsIntegrityError(
            f"{path}: sha256 {digest[:16]}... does not start with {match.group(1)} as its name says; "
            f"the file is damaged or was replaced. Delete it (torchvision downloads it again online) "
            f"or run `{INSTALL_COMMAND}` for the converted weights."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsIntegrityError(f"{path}: refused, it holds more than tensors ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsIntegrityError(f"{path}: not a state dict of tensors")
    return state


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A converted weights file; a damaged one is a WeightsIntegrityError, not a parser error."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise WeightsIntegrityError(f"{path}: not a readable safetensors file ({err})") from err


# ----------------------------------------------------------------------------- downloads

DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: an unreachable host fails in seconds, not minutes


def offline() -> bool:
    """The user asked for no network: ``HF_HUB_OFFLINE`` (the variable this project's offline
    setup and the hub libraries use) is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_verified(url: str, dest: str | os.PathLike, sha256: str | None = None, check=None,
                      timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest``, which appears only once the file is verified: its sha256
    equals ``sha256`` (when one is pinned) and ``check(path)`` (e.g. a weights_only load) does not
    raise. The bytes go to a temporary file beside ``dest`` first, removed on any failure, so an
    interrupted or refused download never leaves a file that a later run would trust.

    Raises WeightsIntegrityError for a file that fails verification, OSError (urllib's URLError
    included) when the server cannot be reached or the transfer fails."""
    import tempfile
    import urllib.request

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "opensora-vae"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout_s) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise WeightsIntegrityError(
                f"download of {url} refused: sha256 {digest.hexdigest()} is not the pinned {sha256} (a changed or "
                f"tampered file, or a proxy's error page); nothing was saved to {dest}")
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
