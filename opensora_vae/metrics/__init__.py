"""Reconstruction metrics of the reference eval: SSIM, PSNR, LPIPS, FloLPIPS, the eval frame
protocol (`protocol.py`) and the folder evaluation (`evaluate.py`).

Names are imported on first use (PEP 562): `from opensora_vae.metrics import psnr` loads neither
lpips nor torchvision, which cost seconds at start-up that an SSIM/PSNR eval does not need.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EVAL_METRICS": "evaluate", "MetricSuite": "evaluate", "evaluate_dirs": "evaluate",
    "EvalError": "protocol", "check_frame_batches": "protocol", "frame_indices": "protocol",
    "pair_files": "protocol", "preprocess": "protocol",
    "FloLPIPS": "flolpips", "flow_weighted_average": "flolpips",
    "LPIPSMetric": "lpips_metric",
    "psnr": "psnr",
    "PWCNet": "pwcnet", "build_pwcnet": "pwcnet", "correlation": "pwcnet",
    "ssim": "ssim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
