"""Learning-rate schedules: an optional linear warmup, then constant (the reference recipe), linear
or cosine decay to `min_lr_ratio * lr` at the run's last step.

`build_lr_scheduler(optimizer, section, total_steps)` serves any optimizer (the generator's, the
discriminator's) from a config section `dict(kind, warmup_steps, min_lr_ratio)` (the schema's
`lr_schedule` block). The scheduler is a `torch.optim.lr_scheduler.LambdaLR`: the factor of step s
is a closed form, so a resumed run computes the same learning rates bit for bit, and it is a
checkpoint state entry. It is stepped once per global step (skipped updates included), so the
rate is a function of the step alone.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR

LR_SCHEDULE_KINDS = ("constant", "linear", "cosine")


def lr_factor(kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """The multiplier of the configured lr for the update after `done` completed steps."""
    if kind not in LR_SCHEDULE_KINDS:
        raise ValueError(f"unknown lr schedule kind {kind!r}, expected one of {LR_SCHEDULE_KINDS}")

    def factor(done: int) -> float:
        if done < warmup_steps:
            return (done + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (done - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
        shape = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return factor


class LRSchedule(LambdaLR):
    """LambdaLR whose resume keeps this run's configured lr: the saved step count continues, the
    base rate is the one this run's optimizer was built with (as the optimizer's own settings)."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]):
        super().__init__(optimizer, factor)
        self.configured_lrs = list(self.base_lrs)

    def step(self, epoch: int | None = None) -> None:
        with warnings.catch_warnings():
            # A skipped (non-finite) first update is not a misordered call here: the rate is a
            # closed form of the step count, so no value of the schedule is skipped.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            super().step(epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        configured = self.configured_lrs  # the saved dict holds the saving run's
        super().load_state_dict(state)
        self.configured_lrs = configured
        self.base_lrs = list(configured)
        # The same expression LambdaLR.step uses: the lr of the next update, bit for bit.
        lrs = [base * fn(self.last_epoch) for base, fn in zip(self.base_lrs, self.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


def build_lr_scheduler(optimizer: torch.optim.Optimizer, section: Mapping[str, Any], total_steps: int) -> LRSchedule:
    """The schedule of config `section` (`kind`, `warmup_steps`, `min_lr_ratio`) over `total_steps`."""
    return LRSchedule(optimizer, lr_factor(section["kind"], int(section["warmup_steps"]), int(total_steps),
                                           float(section["min_lr_ratio"])))
