"""Files written whole or not at all.

Every result, table, index and shard the project writes goes through `atomic_write`: the bytes go
to a hidden temporary file beside the target (`.tmp-<name>.<pid>`: ranks never share one), are
flushed to disk, and the file is renamed over the target. A reader, a resumed run or the next
command sees the old file or the new one, never a half; a failure (disk full, read-only folder,
an interrupt) removes the temporary file and raises. Checkpoint *directories* have their own
scheme (`models/checkpoint_io.py`, `training/checkpoint.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

TMP_PREFIX = ".tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)`, then `tmp` flushed and renamed to `path`; returns `path`."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
