"""The data table: the ``path`` column of a CSV or parquet file, held as one byte buffer.

A training table can have tens of millions of rows, and every DataLoader worker is a fork of the
process that loaded it. Per-row Python objects (a pandas object column, a list of ``str``) do not
stay shared: reference counting writes to them, and allocations in a worker land in the holes
between them, so each worker's private memory grows towards the size of the table as it reads.
`PathTable` holds the paths as two numpy arrays, the UTF-8 bytes of every path back to back and
int64 offsets (row ``i`` is ``data[offsets[i]:offsets[i + 1]]``): two objects whatever the number
of rows, never written after loading, so forked workers keep sharing their pages.

Only the ``path`` column is read (pyarrow, streamed in batches, then copied batch by batch into
arrays of the exact size, so the peak stays near one copy of the column); other columns are never
converted. A relative
path is relative to the table's folder, so a dataset folder can move: rows are stored as written
and resolved when read (``~`` expanded, relative ones joined to the folder and normalised).

Under torchrun, `load_table_once_per_node` parses the table once per node instead of once per
rank: local rank 0 writes the two arrays to node-local shared memory (``/dev/shm``, or the folder
in ``$OPENSORA_VAE_SHARED_TABLE_DIR``) and every rank of the node maps that one copy read-only.
The files are removed as soon as all ranks have mapped them; the mappings keep the memory alive
until the last process (DataLoader workers included) exits, so nothing is left behind.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import socket
from typing import Iterator

import numpy as np

from ..errors import UserError

TABLE_EXTS = (".csv", ".parquet", ".pq")
BATCH_ROWS = 1 << 20  # parquet rows per streamed batch
CSV_BLOCK_BYTES = 16 << 20  # CSV bytes per streamed batch
MAX_EMPTY_REPORTED = 5
SHARED_TABLE_DIR_ENV = "OPENSORA_VAE_SHARED_TABLE_DIR"
DEFAULT_SHARED_TABLE_DIR = "/dev/shm"
_SHARED_PREFIX = "opensora_vae_table_"
_SHARED_MARGIN_BYTES = 64 << 20  # left free in the shared folder for everything else

logger = logging.getLogger(__name__)


class TableError(UserError, ValueError):
    """The CSV/parquet table itself is unusable: missing, unparsable, no 'path' column, no rows."""


class PathTable:
    """Row paths of a table, resolved relative to ``root`` when read. ``table[i]`` is a ``str``."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, root: str):
        self.data, self.offsets, self.root = data, offsets, root

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, index: int) -> str:
        """Row ``index`` as written in the table."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of a table with {len(self)} rows")
        index %= len(self)
        return self.data[self.offsets[index]:self.offsets[index + 1]].tobytes().decode()

    def __getitem__(self, index: int) -> str:
        path = os.path.expanduser(self.raw(int(index)))
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(self.root, path))

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes

    def save(self, folder: str | os.PathLike) -> None:
        """The two arrays as ``data.npy`` and ``offsets.npy`` in ``folder`` (created)."""
        os.makedirs(folder)
        np.save(os.path.join(folder, "data.npy"), self.data)
        np.save(os.path.join(folder, "offsets.npy"), self.offsets)

    @classmethod
    def open(cls, folder: str | os.PathLike, root: str) -> PathTable:
        """A table written by `save`, memory-mapped read-only: processes that open it share its pages."""
        load = lambda name: np.load(os.path.join(folder, name), mmap_mode="r")  # noqa: E731
        return cls(load("data.npy"), load("offsets.npy"), root)


def load_table(data_path: str | os.PathLike) -> PathTable:
    """The ``path`` column of a CSV or parquet table; TableError naming the file if unusable."""
    data_path = str(data_path)
    ext = os.path.splitext(data_path)[1].lower()
    if ext not in TABLE_EXTS:
        raise TableError(f"{data_path}: unsupported table type {ext!r} (use {', '.join(TABLE_EXTS)})")
    if not os.path.isfile(data_path):
        raise TableError(f"{data_path}: file not found")
    columns = _csv_header(data_path) if ext == ".csv" else None
    try:
        if ext != ".csv":
            import pyarrow.parquet as pq

            columns = pq.ParquetFile(data_path).schema_arrow.names
        if "path" not in columns:
            raise TableError(f"{data_path}: no 'path' column (columns: {columns})")
        batches = _csv_batches(data_path) if ext == ".csv" else _parquet_batches(data_path)
        data, offsets, empty, num_empty = _concatenate(batches)
    except TableError:
        raise
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError, ...)
        raise TableError(f"{data_path}: cannot read table ({type(exc).__name__}: {exc})") from exc
    if len(offsets) == 1:
        raise TableError(f"{data_path}: table has no rows")
    if num_empty:
        # A CSV row's line: the header is line 1, rows start at line 2.
        rows = [r + 2 for r in empty] if ext == ".csv" else empty
        where = "lines" if ext == ".csv" else "rows"
        raise TableError(f"{data_path}: {num_empty} empty 'path' values ({where} {rows}...)")
    return PathTable(data, offsets, os.path.dirname(os.path.abspath(data_path)))


def load_table_once_per_node(data_path: str | os.PathLike) -> PathTable:
    """`load_table`, parsed by one process per node under torchrun (module docstring).

    Every rank gets the same table, or the same `TableError`: local rank 0's outcome is shared
    with all ranks before any of them goes on, so a bad table can never leave ranks waiting. When
    the shared folder lacks room, each rank loads the table itself (logged)."""
    from .. import distributed

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if not distributed.is_initialized() or local_world == 1:
        return load_table(data_path)
    # A node's ranks are the children of one torchrun agent on one host: they see one /dev/shm.
    local_rank, node = int(os.environ.get("LOCAL_RANK", 0)), f"{socket.gethostname()}:{os.getppid()}"
    loaded: dict[str, PathTable] = {}

    def load_and_share() -> tuple[str, str | None]:
        loaded["table"] = load_table(data_path)
        return node, _share(loaded["table"])

    # Every node's local rank 0 loads; a failure there is raised on every rank of every node.
    outcomes = distributed.decide_and_agree(load_and_share, deciding=local_rank == 0)
    table = loaded.get("table")
    # None: no room to share, or (another launcher) no local rank 0 beside this rank: load it here.
    folder = next((o[1] for o in outcomes if o is not None and o[0] == node), None)
    try:
        if folder is not None:  # rank 0 too: its private copy goes, the shared one stays
            table = PathTable.open(folder, os.path.dirname(os.path.abspath(data_path)))
        elif table is None:
            table = load_table(data_path)
    finally:
        distributed.barrier()  # every rank of the node has mapped the files: they can go
        if local_rank == 0 and folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return table


def _share(table: PathTable) -> str | None:
    """Writes ``table`` to a new folder in the node's shared folder; None if it has no room."""
    base = os.environ.get(SHARED_TABLE_DIR_ENV) or DEFAULT_SHARED_TABLE_DIR
    # The torchrun agent (this process's parent) and its restart count name one job attempt.
    name = f"{_SHARED_PREFIX}{os.getppid()}_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    folder = os.path.join(base, name)
    try:
        _remove_stale(base)
        free = shutil.disk_usage(base).free
        if free < table.nbytes + _SHARED_MARGIN_BYTES:
            logger.info("%s has %d MB free, the table needs %d MB: each rank loads the table itself (set "
                        "$%s to a node-local folder with room to share one copy)", base, free >> 20,
                        table.nbytes >> 20, SHARED_TABLE_DIR_ENV)
            return None
        shutil.rmtree(folder, ignore_errors=True)  # a crashed earlier attempt of this agent
        table.save(folder)
    except OSError as exc:
        logger.info("cannot share the table through %s (%s): each rank loads it itself", base, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return folder


def _remove_stale(base: str) -> None:
    """Folders of jobs whose torchrun agent is gone (killed before removing them)."""
    for entry in os.listdir(base):
        if not entry.startswith(_SHARED_PREFIX):
            continue
        try:
            os.kill(int(entry[len(_SHARED_PREFIX):].split("_")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
        except (ValueError, PermissionError):  # not ours, or another user's live job
            pass


def _csv_header(data_path: str) -> list[str]:
    try:
        with open(data_path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TableError(f"{data_path}: cannot read table ({type(exc).__name__}: {exc})") from exc
    if not header:
        raise TableError(f"{data_path}: cannot read table (the file is empty or has no header)")
    return header


def _csv_batches(data_path: str):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Other columns are tokenised but never converted; `path` stays text even when it looks
    # numeric, and an empty value is "" (reported below), not a missing value.
    reader = pacsv.open_csv(
        data_path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(include_columns=["path"], column_types={"path": pa.string()}))
    for batch in reader:
        yield batch.column(0)


def _parquet_batches(data_path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(data_path).iter_batches(batch_size=BATCH_ROWS, columns=["path"]):
        column = batch.column(0)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            column = column.cast(pa.string())
        yield column


def _concatenate(columns) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """(data, offsets, first empty rows, number of empty rows) of a stream of arrow string arrays.

    The batches are kept (as read, zero-copy) until their total size is known; then each is
    copied into arrays of exactly that size and released at once, so the peak stays near one
    copy of the column (growing an array instead would hold up to twice its final size).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    parts: list[tuple[np.ndarray, np.ndarray]] = []  # per batch: (lengths, bytes)
    empty: list[int] = []
    num_empty = rows = num_bytes = 0
    for column in columns:
        n = len(column)
        width = np.dtype(np.int64 if pa.types.is_large_string(column.type) else np.int32)
        _, offset_buf, data_buf = column.buffers()
        local = np.frombuffer(offset_buf, dtype=width, count=n + 1, offset=column.offset * width.itemsize)
        lengths = np.diff(local)
        # Missing, "" or only whitespace (`utf8_is_space` is true for non-empty all-space text).
        blank = (lengths == 0) | pc.fill_null(pc.utf8_is_space(column), True).to_numpy(zero_copy_only=False)
        if blank.any():
            hits = np.flatnonzero(blank)
            empty.extend((hits[: MAX_EMPTY_REPORTED - len(empty)] + rows).tolist())
            num_empty += len(hits)
        chars = np.frombuffer(data_buf, dtype=np.uint8)[local[0]:local[-1]] if n and local[-1] > local[0] \
            else np.zeros(0, np.uint8)
        parts.append((lengths, chars))
        rows, num_bytes = rows + n, num_bytes + len(chars)
    data, offsets = np.empty(num_bytes, dtype=np.uint8), np.empty(rows + 1, dtype=np.int64)
    offsets[0] = row = pos = 0
    pool = pa.default_memory_pool()
    parts.reverse()  # pop() from the end: the first batch first
    while parts:
        lengths, chars = parts.pop()
        data[pos:pos + len(chars)] = chars
        np.cumsum(lengths, out=offsets[row + 1:row + 1 + len(lengths)])
        offsets[row + 1:row + 1 + len(lengths)] += pos
        row, pos = row + len(lengths), pos + len(chars)
        del lengths, chars  # the batch's arrow buffers go with the last view of them
        if len(parts) % 64 == 0:
            pool.release_unused()
    data.flags.writeable = offsets.flags.writeable = False
    return data, offsets, empty, num_empty
