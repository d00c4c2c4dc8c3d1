"""Models: spatial SD-VAE, causal temporal VAE, their pipeline and checkpoint I/O."""

from .checkpoint_io import RELEASED_REPO, CheckpointError
from .distributions import DiagonalGaussian
from .pipeline import SCALE, SHIFT, PipelineOutput, Reconstruction, VideoVAEPipeline
from .spatial import SpatialVAE
from .temporal import CausalConv3d, TemporalVAE

__all__ = ["CheckpointError", "DiagonalGaussian", "PipelineOutput", "RELEASED_REPO", "Reconstruction",
           "SCALE", "SHIFT", "VideoVAEPipeline", "SpatialVAE", "CausalConv3d", "TemporalVAE"]
