"""The files of an export folder and how they are written.

    DIR/manifest.json         stamp (VAE, weights sha256, window, storage settings) + stats
    DIR/index.parquet         one row per CSV row: path, shard, key, shape, frames, fps, status, psnr
    DIR/shards/NNNNNN.safetensors
                              `<key>.mean` and `<key>.logvar` per clip (posterior moments), and in
                              the header the shard's own index rows and latent moments

A shard holds a fixed range of CSV rows (`shard_size` of them), whatever the number of processes,
and is written once, whole: to a hidden temporary file in the same folder, flushed to disk, then
renamed. A shard file that exists is therefore complete, which is what makes a killed export
resumable by re-running the same command. Every write failure (disk full, read-only folder) is an
`ExportError` naming the file, and the temporary file is removed.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from ..files import TMP_PREFIX, atomic_write

MANIFEST_NAME, INDEX_NAME, SHARD_DIR = "manifest.json", "index.parquet", "shards"
SHARD_META_KEY = "opensora_vae_export"  # the one safetensors header entry: its bytes are deterministic
LATENT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
INDEX_COLUMNS = ("row", "path", "shard", "key", "shape", "frames", "fps", "is_image", "status", "psnr")
STATUS_OK = "ok"


class ExportError(UserError, RuntimeError):
    """An export that cannot start or continue: bad settings, a folder holding another export,
    a storage failure (the message names the file and the cause)."""


class ExportStorageError(ExportError):
    """A write that failed on this rank (disk full, read-only): this rank prints it."""

    same_on_all_ranks = False


def shard_name(shard: int) -> str:
    return f"{shard:06d}.safetensors"


def row_key(row: int) -> str:
    """Tensor-name prefix of a CSV row inside its shard."""
    return f"{row:09d}"


def _storage_error(path: Path, err: OSError) -> ExportStorageError:
    cause = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied"}.get(err.errno, err.strerror or str(err))
    return ExportStorageError(f"cannot write {path}: {cause}; nothing partial was kept, free space or fix the "
                       "folder and run the same command again to continue")


def _write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`files.atomic_write`, a failure being the export's storage error naming the file."""
    try:
        atomic_write(path, write)
    except OSError as err:
        raise _storage_error(Path(path), err) from err


def write_json(path: Path, data: dict) -> None:
    _write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n"))


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files a killed run left behind (never renamed, so never part of the export)."""
    for sub in (folder, folder / SHARD_DIR):
        if sub.is_dir():
            for tmp in sub.glob(f"{TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)


def write_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    header = {SHARD_META_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))}
    from ..models.checkpoint_io import _umask

    tensors = {k: v.contiguous() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=header)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600 whatever the umask

    _write(path, write)


def read_shard_meta(path: Path) -> dict:
    """The shard's header entry (its rows and moments) without reading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[SHARD_META_KEY])


def write_index(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("row", pa.int64()), ("path", pa.string()), ("shard", pa.string()),
                        ("key", pa.string()), ("shape", pa.list_(pa.int64())), ("frames", pa.int64()),
                        ("fps", pa.float64()), ("is_image", pa.bool_()), ("status", pa.string()),
                        ("psnr", pa.float64())])
    table = pa.table({name: [r[name] for r in rows] for name in INDEX_COLUMNS}, schema=schema)
    _write(path, lambda tmp: pq.write_table(table, str(tmp)))
