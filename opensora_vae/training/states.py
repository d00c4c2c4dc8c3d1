"""The training components' state, as entries of the checkpoint (`CheckpointManager.states`).

Each class wraps one component so that it has `state_dict()` / `load_state_dict(state)` (the
protocol of `training/checkpoint.py`): the model weights, an optimizer, the data position, the
RNG streams, the step counters and a record of the replicas' checksums. The EMA, the LR schedule
and the log's running means have the two methods themselves.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..data import StatefulDistributedSampler
from ..distributed import all_gather_objects
from ..models.checkpoint_io import CheckpointError, load_weights_into

logger = logging.getLogger("opensora_vae.training")


def rank_generator_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def replica_checksum(module: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all DDP ranks iff the replicas are equal."""
    digest = hashlib.sha256()
    for name, p in module.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class ModelState:
    """A module's whole weights on CPU (gathered under FSDP2), e.g. the pipeline as entry "model"."""

    def __init__(self, module: nn.Module, fsdp: bool):
        self.module, self.fsdp = module, fsdp

    def pipeline_config(self) -> dict:
        """config.json of the save_pretrained dirs (the pipeline's architecture)."""
        return self.module.export_config()

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True,
                                                                              cpu_offload=True))
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.module, state, options=StateDictOptions(full_state_dict=True))
        else:
            load_weights_into(self.module, state, "the checkpoint")


class OptimizerState:
    """An optimizer's state keyed by parameter names (the same for DDP and FSDP). On resume this
    run's config wins over the saved hyper-parameters (`hyper`: lr, betas, eps, weight_decay)."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool, hyper: dict):
        self.module, self.optimizer, self.fsdp, self.hyper = module, optimizer, fsdp, hyper

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=self.fsdp, cpu_offload=self.fsdp)
        return to_cpu(get_optimizer_state_dict(self.module, self.optimizer, options=opts))

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        saved = set(state["state"])
        trainable = {n for n, p in self.module.named_parameters() if p.requires_grad}
        if saved and saved != trainable:
            diff = sorted(saved ^ trainable)
            raise CheckpointError(
                f"it trained a different set of parameters than this config ({len(diff)} differ, e.g. "
                f"{diff[:3]}): --load resumes the same run; to start a new stage from its weights use --ckpt-path")
        set_optimizer_state_dict(self.module, self.optimizer, state,
                                 options=StateDictOptions(full_state_dict=self.fsdp))
        for group in self.optimizer.param_groups:
            group.update(self.hyper)


@dataclass
class Counters:
    """Where the run is (steps, epochs, the guards' counts) and the layout it runs with."""

    world_size: int
    batch_size: int
    parallel: str
    global_step: int = 0
    epoch: int = 0
    nonfinite_streak: int = 0
    skipped_total: int = 0
    attempts_total: int = 0
    same_layout: bool = True  # after a resume: the checkpoint had this world size and batch size

    PROGRESS = ("global_step", "epoch", "nonfinite_streak", "skipped_total", "attempts_total")

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.PROGRESS}, "world_size": self.world_size,
                "batch_size": self.batch_size, "parallel": self.parallel}

    def load_state_dict(self, state: dict) -> None:
        for key in self.PROGRESS:
            setattr(self, key, int(state[key]))
        self.same_layout = state["world_size"] == self.world_size and state["batch_size"] == self.batch_size
        self.saved_layout = (int(state["world_size"]), int(state["batch_size"]))


class SamplerState:
    """The data position. A resume whose table changed restarts the epoch (the sampler says why)
    and the unreadable-sample counts, which judged the old table's rows."""

    def __init__(self, sampler: StatefulDistributedSampler, counters: Counters, is_main: bool):
        self.sampler, self.counters, self.is_main = sampler, counters, is_main

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        change = self.sampler.load_state_dict(state)
        if change is None:
            return
        if "dataset_len" in change.changed:
            self.counters.skipped_total = self.counters.attempts_total = 0
        if self.is_main:
            logger.warning("resuming: %s", change)


class RNGState:
    """Every rank's RNG streams (global torch, the sampling-noise generator, CUDA), in rank order.

    Registered after the counters and the sampler: a resume with another world size or batch size
    re-seeds the noise streams from the step instead (the data still continues at its position)."""

    def __init__(self, generator: torch.Generator, device: torch.device, rank: int, seed: int,
                 counters: Counters, sampler: StatefulDistributedSampler):
        self.generator, self.device, self.rank, self.seed = generator, device, rank, seed
        self.counters, self.sampler = counters, sampler

    def _local(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        return all_gather_objects(self._local())

    def load_state_dict(self, states: list[dict[str, torch.Tensor]]) -> None:
        counters = self.counters
        if counters.same_layout:
            rng = states[self.rank]
            torch.set_rng_state(rng["torch"])
            self.generator.set_state(rng["generator"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            return
        # The sampler order is rank-independent, so data continues at the same global position;
        # sampling noise streams are per rank and are re-seeded from the step.
        self.generator.manual_seed(rank_generator_seed(self.seed * 1_000_003 + counters.global_step, self.rank))
        if self.rank == 0:
            logger.warning("resuming with world size %d / batch size %d (checkpoint: %d / %d): the "
                           "data continues at global sample %d of epoch %d, but noise streams are "
                           "re-seeded, so the run is not bit-identical to an uninterrupted one",
                           counters.world_size, counters.batch_size, *counters.saved_layout,
                           self.sampler.global_consumed, self.sampler.epoch)


class ReplicaChecksums:
    """A record, not state: each DDP rank's parameter checksum at the save, checked equal there
    (a save with diverged replicas is refused). Nothing to restore. None under FSDP (sharded)."""

    def __init__(self, module: nn.Module, fsdp: bool, counters: Counters):
        self.module, self.fsdp, self.counters = module, fsdp, counters

    def state_dict(self) -> dict:
        if self.fsdp:
            return {"replica_checksums": None}
        checksums = all_gather_objects(replica_checksum(self.module))
        if len(set(checksums)) != 1:
            raise RuntimeError(f"model replicas differ across ranks at step {self.counters.global_step} "
                               f"(parameter checksums {checksums}): training is broken")
        return {"replica_checksums": checksums}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the record describes the saving run's replicas."""
