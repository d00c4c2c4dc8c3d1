"""Process-group setup (torchrun or single process), small collectives, clean exit.

Shared by training and inference."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, NoReturn

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
        return dist.is_available() and dist.is_initialized()


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


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned). Identity without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object per rank, in rank order, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _flush_everything() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
            handler.close()
        except Exception:  # a closed stream must not turn success into failure
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def run_and_exit(main: Callable[[], Any]) -> NoReturn:
    """Runs `main`, tears the process group down, and exits with a truthful status.

    Under torchrun, torch + gloo sometimes aborts during interpreter shutdown after all work is
    done ("terminate called without an active exception"), turning a successful run into a
    crash. Ending the process with `os._exit` right after `destroy_process_group`, once every
    log stream is flushed, avoids that shutdown path. Single-process runs exit normally.
    Exit status: 0 on success, the SystemExit code if one was raised, 130 on Ctrl-C, else 1
    with the traceback printed.
    """
    code: int = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code not in (None, 0) and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # report any failure with its traceback, then exit non-zero
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank is not None else ""
        print(f"{prefix}failed:\n{traceback.format_exc()}", file=sys.stderr)
        code = 1
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        try:
            destroy()
        except Exception as exc:  # a peer that died already: still exit with our own status
            print(f"destroy_process_group failed: {exc}", file=sys.stderr)
    if distributed or launched_by_torchrun():
        _flush_everything()
        os._exit(code)
    sys.exit(code)
