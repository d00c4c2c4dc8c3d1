"""Reconstruction metrics of the reference eval: SSIM, PSNR, LPIPS, FloLPIPS, the eval frame
protocol (`protocol.py`) and the folder evaluation (`evaluate.py`).

Names are imported on first use (PEP 562): `from opensora_vae.metrics import psnr` loads neither
lpips nor torchvision, which cost seconds at start-up that an SSIM/PSNR eval does not need.
`psnr` and `ssim` are imported here: they share their submodules' names, and importing a
submodule would otherwise leave the module, not the function, under that name.
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .psnr import psnr
from .ssim import ssim

_EXPORTS = {
    "EVAL_METRICS": "settings", "EvalSettings": "settings", "resolve_device": "settings",
    "MetricSuite": "evaluate", "evaluate_dirs": "evaluate", "score_pair": "evaluate", "ClipResult": "evaluate",
    "gather_results": "summary", "summarize_results": "summary",
    "PROTOCOL_CARDS": "protocol",
    "EvalError": "protocol", "check_frame_batches": "protocol", "frame_indices": "protocol",
    "pair_files": "protocol", "preprocess": "protocol",
    "FloLPIPS": "flolpips", "flow_weighted_average": "flolpips",
    "LPIPSMetric": "lpips_metric",
    "PWCNet": "pwcnet", "build_pwcnet": "pwcnet", "correlation": "pwcnet",
}

__all__ = sorted([*_EXPORTS, "psnr", "ssim"])

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
