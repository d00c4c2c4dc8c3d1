"""Exponential moving average of the trainable weights (works on plain and FSDP2-sharded params)."""

from __future__ import annotations

import torch
import torch.nn as nn


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 `DTensor` shard (a collective), or `t` itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class EMA:
    """`shadow = decay * shadow + (1 - decay) * param` after every optimizer step.

    Only parameters that train are tracked: frozen ones equal the model's at any time. With
    FSDP2 each rank keeps the EMA of its own shard, so memory scales like the model's.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().clone() for n in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        torch._foreach_lerp_([self.shadow[n] for n in self.names],
                             [params[n].detach() for n in self.names], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Whole EMA tensors of the trained parameters, on CPU. Every rank must call it (FSDP gathers)."""
        return {n: full_tensor(t).detach().cpu() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """From whole tensors (extra keys, e.g. the frozen weights of a saved `ema/` dir, are ignored)."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} trained parameters, e.g. {missing[:3]}")
        for n, t in self.shadow.items():
            src = state[n]
            if hasattr(t, "device_mesh"):  # FSDP2 shard: keep only this rank's part
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.to(t.device, t.dtype), t.device_mesh, t.placements)
                t.to_local().copy_(src.to_local())
            else:
                t.copy_(src)
