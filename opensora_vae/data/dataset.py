"""CSV/parquet-driven dataset of videos and images, and its DataLoader.

Design choices (differences from the Open-Sora 1.2 reference are deliberate):
- Clips are read by `clips.ClipReader` with a `RandomWindow`: videos shorter than
  ``num_frames * frame_interval`` are skipped with the reason "too short (N < M)" (the reference
  padded them by repeating frames); a 1-frame video is treated as an image.
- Images are read as one frame and tiled to ``num_frames`` (static clips, as in the
  reference), so they batch with videos; the training loop decides how frames are used.
- An unreadable sample is never fatal: it is recorded in the item's ``skipped`` list (which the
  caller reports), and replaced by the next index (wrapping). ``max_retries`` consecutive failures raise, so a
  CSV of bad rows fails fast instead of looping forever.
- The temporal crop is drawn from ``np.random.default_rng([seed, epoch, index])``: an item is a
  pure function of (seed, epoch, index), whatever the worker that loads it or when.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .clips import READ_ERRORS, ClipReader, RandomWindow, SampleReadError, skip_reason
from .table import PathTable, load_table
from .transforms import VideoTransform

logger = logging.getLogger(__name__)


class UnreadableSamplesError(SampleReadError):
    """`max_retries` consecutive samples were unreadable (e.g. a CSV of bad rows)."""


class VideoDataset(Dataset):
    """Items: ``{"video": (3, T, H, W) float32 in [-1, 1], "index": int (the sample actually
    returned, which differs from the requested one after a replacement), "path": str,
    "is_image": bool, "skipped": list[(path, reason)]}``."""

    # No defaults: the config schema (configs/vae/_base_/default_train.py `dataset`, `seed`) is the
    # one place that holds them; `from_config` builds the dataset from it.
    def __init__(
        self,
        data_path: str | os.PathLike,
        *,
        num_frames: int,
        frame_interval: int,
        image_size: int | tuple[int, int],
        transform_name: str,
        seed: int,
        max_retries: int,
        read_timeout_s: float | None,
        table: PathTable | None = None,
    ):
        self.data_path = str(data_path)
        # Only the paths, in one buffer: no per-row objects to copy into each worker (table.py).
        # `table`: data_path's table loaded already (training loads it once per node).
        self.paths = load_table(self.data_path) if table is None else table
        self.num_frames = num_frames
        self.frame_interval = frame_interval
        self.transform = VideoTransform(transform_name, image_size)
        self.reader = ClipReader(self.transform, RandomWindow(num_frames, frame_interval), read_timeout_s)
        self.seed = seed
        self.max_retries = max_retries
        # Shared memory so that set_epoch reaches DataLoader workers, persistent ones included.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @classmethod
    def from_config(cls, dataset: Any, seed: int, table: PathTable | None = None) -> VideoDataset:
        """From a config's ``dataset`` section (``data_path``, ``num_frames``, ``frame_interval``,
        ``image_size``, ``transform_name``, ``max_retries``, ``read_timeout_s``) and its ``seed``."""
        size = dataset["image_size"]
        return cls(dataset["data_path"], num_frames=dataset["num_frames"], frame_interval=dataset["frame_interval"],
                   image_size=size if isinstance(size, int) else tuple(size), transform_name=dataset["transform_name"],
                   seed=seed, max_retries=dataset["max_retries"], read_timeout_s=dataset["read_timeout_s"],
                   table=table)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, epoch, index])

    def load(self, index: int, epoch: int | None = None) -> tuple[torch.Tensor, bool]:
        """(clip (3, T, H, W), is_image) of one sample; raises one of `clips.READ_ERRORS`."""
        clip = self.reader.read(self.paths[index], self.rng(index, epoch))
        return clip.video, clip.is_image

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        n = len(self.paths)
        tries = min(self.max_retries, n)  # a table shorter than that: every row once, not again
        for attempt in range(tries):
            i = (int(index) + attempt) % n
            try:
                video, image = self.load(i)
            except READ_ERRORS as exc:
                reason = skip_reason(exc)
                skipped.append((self.paths[i], reason))
                # The caller reports skips (the trainer once per file, with its rank): debug here.
                logger.debug("skipping sample %d %s: %s", i, self.paths[i], reason)
                continue
            return {"video": video, "index": i, "path": self.paths[i], "is_image": image,
                    "skipped": skipped}
        # Say what was looked for, where: the paths as resolved (relative rows against the folder of
        # the table's path as given, a symlink's own folder included), each with its reason.
        root = getattr(self.paths, "root", None)
        where = f" (relative rows are resolved against {root})" if root else ""
        if tries == n:
            looked = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3]) + (" ..." if n > 3 else "")
            raise UnreadableSamplesError(f"none of the {n} rows of {self.data_path} could be read{where}: "
                                         f"{looked}: check your CSV")
        raise UnreadableSamplesError(
            f"{len(skipped)} consecutive unreadable samples starting at index {index} of "
            f"{self.data_path}{where}, e.g. {skipped[0][0]}: {skipped[0][1]}: check your CSV"
        )


def collate_samples(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack videos; keep paths as a list and concatenate the skipped lists of the batch."""
    return {
        "video": torch.stack([it["video"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "path": [it["path"] for it in items],
        "is_image": torch.tensor([it["is_image"] for it in items], dtype=torch.bool),
        "skipped": [s for it in items for s in it["skipped"]],
    }


# glibc's own default for both thresholds. Setting them at all turns off glibc's habit of raising
# the mmap threshold after a large block is freed: after that, every decoded frame buffer of a
# worker came from its heap, whose pages (shared with the main process until touched) were then
# copied and never returned, so a worker's private memory grew by ~100-200 MB over a few hundred
# reads whatever the table size. Fixed, large buffers are mmapped and unmapped when freed.
MALLOC_THRESHOLD_BYTES = 128 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt options (malloc.h)


def _fix_malloc_thresholds() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to fix
        return
    for option in (_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD):
        mallopt(option, MALLOC_THRESHOLD_BYTES)


class _WorkerInit:
    """In each DataLoader worker: fixed malloc thresholds (above), and global RNGs seeded per
    (seed, rank, worker) for any code that still uses them (the dataset itself never does).
    A class, not a closure, so it pickles for spawn workers."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def __call__(self, worker_id: int) -> None:
        _fix_malloc_thresholds()
        seq = np.random.SeedSequence([self.seed, self.rank, worker_id])
        worker_seed = int(seq.generate_state(1)[0])
        random.seed(worker_seed)
        np.random.seed(worker_seed)
        torch.manual_seed(worker_seed)


# Time a worker may take for a batch beyond its reads (each bounded by the dataset's read timeout):
# a worker stuck anywhere else raises after this instead of hanging the run.
LOADER_TIMEOUT_S = 600.0


def worker_timeout_s(dataset: Dataset, batch_size: int) -> float:
    """How long the main process waits for a worker's batch: longer than the slowest batch whose
    every read (retries included) ends just within the dataset's ``reader.read_timeout_s``, so a
    stuck read is reported by the reader, naming its file, not by torch's anonymous timeout."""
    inner = dataset.dataset if isinstance(dataset, Subset) else dataset
    read_timeout = getattr(getattr(inner, "reader", None), "read_timeout_s", None)
    if read_timeout is None:
        return LOADER_TIMEOUT_S
    return batch_size * getattr(inner, "max_retries", 1) * read_timeout + LOADER_TIMEOUT_S


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    seed: int = 42,
    rank: int = 0,
    drop_last: bool = True,
    timeout_s: float | None = None,
    persistent_workers: bool | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = 2,
    collate_fn: Callable[[list], Any] = collate_samples,
) -> DataLoader:
    """The one DataLoader of training and inference: in-order (the sampler decides); in each
    worker, fixed malloc thresholds and per-(seed, rank, worker) seeding (`_WorkerInit`); a worker
    timeout (default `worker_timeout_s`: a stuck worker raises instead of hanging); persistent workers by default when there
    are workers (the dataset's epoch lives in shared memory, so set_epoch still reaches them); and
    pinned memory only when CUDA is available."""
    workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        timeout=(worker_timeout_s(dataset, batch_size) if timeout_s is None else timeout_s) if workers else 0,
        worker_init_fn=_WorkerInit(seed, rank) if workers else None,
        persistent_workers=workers if persistent_workers is None else (persistent_workers and workers),
        prefetch_factor=prefetch_factor if workers else None,
    )
