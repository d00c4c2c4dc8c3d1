"""Mixed precision, the same for training and inference: the `dtype` config key's choices and
the autocast context they select."""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

# fp16 is not offered: it needs loss scaling, which the trainer does not implement.
DTYPES = ("fp32", "bf16")
_WARNED: set[str] = set()


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on CUDA (fp32 master weights); on CPU bf16 is slow and inexact, so fp32 is
    used there with a warning."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of {DTYPES} (fp16 would need loss scaling, which the "
                         "trainer does not implement)")
    if dtype == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if dtype == "bf16" and device.type not in _WARNED:
        _WARNED.add(device.type)  # once per process, not once per step
        logger.warning("dtype bf16 is only used on CUDA; running in fp32 on %s", device)
    return contextlib.nullcontext()
