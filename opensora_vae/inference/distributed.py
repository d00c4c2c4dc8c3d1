"""Process group for `torchrun`: each rank reconstructs its own share of the samples."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class RankInfo:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_ranks() -> RankInfo:
    """Reads torchrun's environment; plain `python` is rank 0 of 1. CUDA when available."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return RankInfo(rank, world, device, owns)


def shard(indices: list[int], info: RankInfo) -> list[int]:
    """Rank r takes every world_size-th sample starting at r: balanced, no overlap."""
    return indices[info.rank::info.world_size]


def gather_objects(obj: Any, info: RankInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (just `[obj]` without a process group)."""
    if info.world_size == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: RankInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.barrier()


def teardown(info: RankInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
