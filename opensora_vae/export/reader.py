"""`LatentDataset(DIR)`: random access to an export's latents for diffusion training.

`dataset[i]` is the i-th exported clip (rows with status `ok`, in CSV order): `{"z": (C, T', h, w)
float32 normalised with the VAE's shift/scale, "path": the row's path as written in the CSV,
"row", "shape", "frames", "fps", "is_image", "psnr"}`. `z` is the posterior mode, or with
`sample=True` a sample of the posterior with the generator of `sample_generator(seed, row)`
(inference's latent noise, seeded by `np.random.SeedSequence([seed, row])`): the same for a row
whatever the worker, process or order that reads it.

Like the path table (data/table.py), the index is held in a few numpy arrays (paths as one UTF-8
buffer plus offsets): nothing per row for DataLoader workers to copy. Shards are memory-mapped by
safetensors, opened lazily in each process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.table import PathTable
from ..errors import UserError
from ..inference.runner import sample_generator
from ..models.distributions import DiagonalGaussian
from ..weights import sha256_of
from .manifest import read_manifest
from .storage import INDEX_NAME, SHARD_DIR, SHARD_META_KEY, STATUS_OK, row_key, shard_name

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class LatentsMismatchError(UserError, ValueError):
    """Latents made by another VAE than the one the reader was told to expect, or an export that
    is incomplete or damaged."""


def weights_sha256(vae: str | os.PathLike) -> str:
    """A sha256 hex string as is, else the sha256 of a checkpoint's weights file."""
    if isinstance(vae, str) and _SHA256.match(vae):
        return vae
    from ..models.checkpoint_io import resolve_checkpoint_files

    return sha256_of(resolve_checkpoint_files(vae)[1])


class LatentDataset(Dataset):
    """Reads an export folder written by `scripts/encode_latents.py`.

    `vae`: the checkpoint (path, step dir or hub id) or weights sha256 the latents must come from;
    latents of another VAE raise `LatentsMismatchError` unless `allow_other_vae=True`. Every
    shard's header is checked against the manifest's VAE as it is opened, `vae` given or not.
    `normalize=False` returns the un-normalised latents.
    """

    def __init__(self, root: str | os.PathLike, *, sample: bool = False, seed: int = 0,
                 vae: str | os.PathLike | None = None, allow_other_vae: bool = False, normalize: bool = True):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None or not manifest.get("complete"):
            state = "no manifest.json" if manifest is None else "an unfinished export (run its command again)"
            raise LatentsMismatchError(f"{self.root}: {state}; not a complete latent export")
        self.manifest = manifest
        self.weights_sha256 = manifest["vae"]["weights_sha256"]
        self.allow_other_vae = allow_other_vae
        if vae is not None and weights_sha256(vae) != self.weights_sha256 and not allow_other_vae:
            raise LatentsMismatchError(f"{self.root} holds latents of another VAE (weights sha256 "
                                       f"{self.weights_sha256[:12]}..., not that of {vae}); pass "
                                       "allow_other_vae=True to read them anyway")
        self.sample, self.seed, self.normalize = sample, seed, normalize
        self.shift = torch.tensor(manifest["vae"]["shift"], dtype=torch.float32).view(-1, 1, 1, 1)
        self.scale = torch.tensor(manifest["vae"]["scale"], dtype=torch.float32).view(-1, 1, 1, 1)

        table = pq.read_table(self.root / INDEX_NAME)
        table = table.filter(pc.equal(table.column("status"), STATUS_OK))
        # Column by column into numpy, without a Python object per row (10 M rows stay cheap).
        self.rows = table.column("row").to_numpy().astype(np.int64)
        shard_ids = pc.utf8_slice_codeunits(table.column("shard"), 0, len("000000"))
        self.shards = pc.cast(shard_ids, "int64").to_numpy().astype(np.int64)
        self.frames = table.column("frames").to_numpy().astype(np.int64)
        self.fps = table.column("fps").to_numpy(zero_copy_only=False).astype(np.float64)
        self.psnr = table.column("psnr").to_numpy(zero_copy_only=False).astype(np.float64)
        self.is_image = table.column("is_image").to_numpy(zero_copy_only=False).astype(bool)
        shapes = table.column("shape").combine_chunks()
        self.shapes = shapes.flatten().to_numpy().astype(np.int64).reshape(len(self.rows), -1)
        self.paths = _path_table(table.column("path"), str(self.root))
        self._open: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    def _shard(self, shard: int):
        from safetensors import safe_open

        if self._pid != os.getpid():  # a forked worker: handles of the parent are not ours
            self._open, self._pid = {}, os.getpid()
        handle = self._open.get(shard)
        if handle is None:
            path = self.root / SHARD_DIR / shard_name(shard)
            handle = safe_open(str(path), framework="pt")
            import json

            made_by = json.loads(handle.metadata()[SHARD_META_KEY]).get("weights_sha256")
            if made_by != self.weights_sha256 and not self.allow_other_vae:
                raise LatentsMismatchError(f"{path} was made by another VAE than {self.root}/manifest.json "
                                           "names (weights sha256 differ); pass allow_other_vae=True to read it")
            self._open[shard] = handle
        return handle

    def moments(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of clip `index` as stored (un-normalised, storage dtype)."""
        key = row_key(int(self.rows[index]))
        handle = self._shard(int(self.shards[index]))
        return handle.get_tensor(f"{key}.mean"), handle.get_tensor(f"{key}.logvar")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip {index} of an export with {len(self)} clips")
        index = int(index) % len(self)
        mean, logvar = (t.float() for t in self.moments(index))
        row = int(self.rows[index])
        z = mean
        if self.sample:  # the posterior's own sampling (clamped logvar), one batch of one clip
            posterior = DiagonalGaussian(torch.cat([mean, logvar])[None])
            z = posterior.sample(sample_generator(self.seed, row, mean.device))[0]
        if self.normalize:
            z = (z - self.shift) / self.scale
        psnr = float(self.psnr[index])
        return {"z": z, "path": self.paths.raw(index), "row": row, "shape": self.shapes[index].tolist(),
                "frames": int(self.frames[index]), "fps": None if np.isnan(self.fps[index]) else float(self.fps[index]),
                "is_image": bool(self.is_image[index]), "psnr": None if np.isnan(psnr) else psnr}


def _path_table(column, root: str) -> PathTable:
    """An arrow string column as a `PathTable` (one UTF-8 buffer + int64 offsets, owned copies)."""
    import pyarrow as pa

    array = column.cast(pa.large_string()).combine_chunks()
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset:array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if array.buffers()[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]:offsets[-1]].copy()
    return PathTable(data, (offsets - offsets[0]).copy(), root)
