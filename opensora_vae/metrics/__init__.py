"""Reconstruction metrics of the reference eval: SSIM, PSNR, LPIPS, FloLPIPS, and the runner."""

from .flolpips import FloLPIPS, flow_weighted_average
from .lpips_metric import LPIPSMetric
from .psnr import psnr
from .pwcnet import PWCNet, build_pwcnet, correlation
from .runner import METRICS, MetricSuite, evaluate_dirs, pair_files, preprocess
from .ssim import ssim

__all__ = [
    "METRICS", "FloLPIPS", "LPIPSMetric", "MetricSuite", "PWCNet", "build_pwcnet", "correlation",
    "evaluate_dirs", "flow_weighted_average", "pair_files", "preprocess", "psnr", "ssim",
]
