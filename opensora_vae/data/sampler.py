"""A distributed sampler whose position can be saved and restored exactly.

Each epoch has one global order (a permutation drawn from (seed, epoch)) that does not depend
on the number of ranks. Global samples are dealt to ranks in turn: global position ``p`` goes
to rank ``p % num_replicas``. The trainer calls ``advance(batch_size * num_replicas)`` after
each optimizer step, and ``state_dict()`` records the epoch and the global position. Because
the order is rank-independent, a run can resume with a different world size or batch size and
continue at exactly the same global position. A resume whose table length or seed differs restarts
the saved epoch under the new order (`load_state_dict` says what changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

ITER_CHUNK = 1 << 16  # indices converted to Python ints at a time


class StatefulDistributedSampler(Sampler[int]):
    def __init__(
        self,
        dataset_len: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 42,
        drop_last: bool = True,
    ):
        if dataset_len < 1:
            raise ValueError(f"dataset_len must be >= 1, got {dataset_len}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}")
        self.dataset_len = dataset_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.global_consumed = 0

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's order of dataset indices, identical on every rank."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(self.dataset_len)
        return np.random.default_rng([self.seed, epoch]).permutation(self.dataset_len)

    def _per_rank(self) -> int:
        remaining = max(0, self.dataset_len - self.global_consumed)
        if self.drop_last:
            return remaining // self.num_replicas
        return -(-remaining // self.num_replicas)

    def __len__(self) -> int:
        """Indices this rank still yields in the current epoch."""
        return self._per_rank()

    def __iter__(self) -> Iterator[int]:
        # The order and the start are fixed now; indices are dealt lazily, a chunk at a time,
        # so a 30M-row epoch is never 30M Python ints at once.
        return self._deal(self.global_order(), self.global_consumed + self.rank, self._per_rank())

    def _deal(self, order: np.ndarray, start: int, count: int) -> Iterator[int]:
        for first in range(0, count, ITER_CHUNK):
            positions = start + self.num_replicas * np.arange(first, min(count, first + ITER_CHUNK))
            # Without drop_last the tail is padded by wrapping around to the start of the order,
            # so every rank yields the same number of samples (as torch's DistributedSampler).
            yield from order[positions % self.dataset_len].tolist()

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``. Calling it with the current epoch keeps the position, so the usual
        ``load_state_dict(...); set_epoch(saved_epoch)`` resumes mid-epoch."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.global_consumed = 0

    def advance(self, num_global_samples: int) -> None:
        """Record that ``num_global_samples`` (summed over all ranks) were consumed."""
        if num_global_samples < 0:
            raise ValueError("num_global_samples must be >= 0")
        self.global_consumed += num_global_samples

    @property
    def epoch_finished(self) -> bool:
        return self._per_rank() == 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "global_consumed": self.global_consumed,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dataset_len": self.dataset_len,
        }

    def load_state_dict(self, state: dict) -> OrderChange | None:
        """Restore the position. World size and batch size may differ from the saving run.

        The table length, seed and shuffle define the order. When one of them differs from the
        saved state, a position in the saved order means nothing in this one, so the saved
        epoch restarts from its first sample under this sampler's order: every row of the new
        table is seen once in that epoch, none is left out (continuing at the saved position
        would silently skip the rows the new order puts first). Returns what changed (None when
        the order continues exactly); the caller warns with it.
        """
        self.epoch = int(state["epoch"])
        changed = {key: (state[key], getattr(self, key)) for key in ORDER_KEYS
                   if key in state and state[key] != getattr(self, key)}
        if not changed:
            self.global_consumed = int(state["global_consumed"])
            return None
        self.global_consumed = 0
        return OrderChange(changed, self.epoch, int(state["global_consumed"]))


# What the saved order is a function of: key -> (why it differs, how to get the saved order back).
ORDER_KEYS = {"dataset_len": ("the table changed", "the table as it was ({} rows)"),
              "seed": ("the seed changed", "--seed {}"),
              "shuffle": ("shuffle changed", "shuffle={}")}


@dataclass
class OrderChange:
    """A resume whose saved order no longer applies: ``changed[key] = (saved, now)``; epoch
    ``epoch`` restarts at position 0, where ``saved_position`` samples of it had been consumed."""

    changed: dict[str, tuple]
    epoch: int
    saved_position: int

    def __str__(self) -> str:
        saved = " and ".join(f"{k}={old!r}" for k, (old, _) in self.changed.items())
        now = " and ".join(f"{k}={new!r}" for k, (_, new) in self.changed.items())
        why = ", ".join(ORDER_KEYS[k][0] for k in self.changed)
        undo = " and ".join(ORDER_KEYS[k][1].format(old) for k, (old, _) in self.changed.items())
        return (f"the data order restarts: the checkpoint was saved with {saved} and this run has {now} "
                f"({why}). The order is drawn from the table length and the seed, so epoch {self.epoch} "
                f"starts again from its first sample in a new order ({self.saved_position} of its samples "
                f"had been used); the global step, weights and optimizer state continue. To continue the "
                f"saved order instead, resume with {undo}.")
