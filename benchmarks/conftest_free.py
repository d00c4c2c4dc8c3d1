"""Builds benchmark models without pytest fixtures."""

import torch

from opensora_vae.models import SpatialVAE, TemporalVAE, VideoVAEPipeline

TINY_SPATIAL = dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3,
                    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                    block_out_channels=[16, 32, 32, 32], layers_per_block=1, latent_channels=4,
                    norm_num_groups=8, sample_size=64)


def tiny_pipeline_for_bench(filters: int = 64) -> VideoVAEPipeline:
    torch.manual_seed(0)
    spatial = SpatialVAE.from_config(TINY_SPATIAL, micro_batch_size=4)
    return VideoVAEPipeline(spatial, TemporalVAE(filters=filters), micro_frame_size=17).eval()
