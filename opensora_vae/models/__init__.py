"""Models: spatial SD-VAE, causal temporal VAE, their pipeline and checkpoint I/O."""

from .builder import build_pipeline
from .checkpoint_io import CheckpointError
from .distributions import DiagonalGaussian
from .pipeline import RELEASED_REPO, SCALE, SHIFT, VideoVAEPipeline
from .spatial import SpatialVAE
from .temporal import CausalConv3d, TemporalVAE

__all__ = ["build_pipeline", "CheckpointError", "DiagonalGaussian", "RELEASED_REPO", "SCALE",
           "SHIFT", "VideoVAEPipeline", "SpatialVAE", "CausalConv3d", "TemporalVAE"]
