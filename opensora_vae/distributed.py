"""Process-group setup (torchrun or single process) and small collectives, shared by training and
inference. The clean exit after `destroy_process_group` lives in `opensora_vae.cli`."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return is_initialized()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(timeout_minutes: float = 30.0) -> DistEnv:
    """Joins the torchrun process group (NCCL on CUDA, gloo on CPU), or runs single-process.

    A plain `python` launch (no torchrun environment) gets no process group: every collective
    below is then a no-op.
    """
    use_cuda = torch.cuda.is_available()
    if not launched_by_torchrun():
        return DistEnv(0, 1, 0, torch.device("cuda", 0) if use_cuda else torch.device("cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_minutes),
                                device_id=device if use_cuda else None)
    return DistEnv(rank, world, local_rank, device)


def is_initialized() -> bool:
    """A process group is running (torchrun); without one every collective here is a no-op."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned). Identity without a process group."""
    if is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object per rank, in rank order, on every rank."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def decide_and_agree(decide: Callable[[], Any], deciding: bool) -> list[Any]:
    """"Some ranks decide, every rank agrees": runs `decide()` where `deciding` is true and returns
    every rank's outcome (None where it did not decide), in rank order, on every rank.

    When a deciding rank fails, every rank raises: that rank its own exception, the others the
    same `UserError` (it is what the user must fix), or a RuntimeError naming the failed rank and
    its error. Outcomes are shared before anyone raises, so no rank ever waits for another forever.
    """
    from .errors import UserError

    outcome, failure, error = None, None, None
    if deciding:
        try:
            outcome = decide()
        except Exception as exc:
            error = exc
            failure = exc if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    gathered = all_gather_objects((outcome, failure))
    if error is not None:
        raise error
    for rank, (_, other) in enumerate(gathered):
        if other is not None:
            raise other if isinstance(other, UserError) else RuntimeError(f"rank {rank} failed: {other}")
    return [value for value, _ in gathered]


def rank0_decides(decide: Callable[[], Any]) -> Any:
    """`decide()` run on rank 0 only; its result (or its error) on every rank."""
    return decide_and_agree(decide, deciding=not is_initialized() or dist.get_rank() == 0)[0]


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(timeout_minutes: float = 30.0) -> Iterator[DistEnv]:
    """`init_distributed()` for one run, destroying the group afterwards only if this call created
    it (a caller that already joined one, e.g. a test or another runner, keeps it)."""
    owns_group = not is_initialized()
    env = init_distributed(timeout_minutes)
    try:
        yield env
    finally:
        if owns_group:
            destroy()
