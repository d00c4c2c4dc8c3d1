"""Pipeline: released key layout, chunk arithmetic, save/load round trip, clear load errors."""

import json
import math

import pytest
import torch

from tests.helpers import build_tiny_pipeline
from opensora_vae.models import CheckpointError, SpatialVAE, VideoVAEPipeline

RELEASED_CONFIG = {  # the structure of hpcai-tech/OpenSora-VAE-v1.2's config.json
    "architectures": ["VideoAutoencoderPipeline"],
    "model_type": "VideoAutoencoderPipeline",
    "micro_frame_size": 17,
    "freeze_vae_2d": False,
    "cal_loss": False,
    "shift": [-0.10, 0.34, 0.27, 0.98],
    "scale": [3.85, 2.32, 2.33, 3.06],
    "vae_2d": {"type": "VideoAutoencoderKL", "from_pretrained": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
               "subfolder": "vae", "micro_batch_size": 4, "local_files_only": True},
    "vae_temporal": {"type": "VAE_Temporal_SD", "from_pretrained": None},
}


def test_full_size_state_dict_equals_released_layout(assets_dir):
    ref = json.loads((assets_dir / "opensora_vae_v1_2_state_dict.json").read_text())
    pipe = VideoVAEPipeline.from_config_dict(RELEASED_CONFIG, device="meta")
    ours = [[k, list(v.shape)] for k, v in pipe.state_dict().items()]
    assert ours == ref["keys"]  # same keys, same shapes, same order
    assert sum(v.numel() for v in pipe.state_dict().values()) == ref["total_params"]
    assert sum(p.numel() for p in pipe.temporal_vae.parameters()) == ref["temporal_params"]
    assert sum(p.numel() for p in pipe.spatial_vae.parameters()) == ref["spatial_params"]
    assert pipe.spatial_vae.scaling_factor == 0.18215
    torch.testing.assert_close(pipe.shift.flatten(), torch.tensor(RELEASED_CONFIG["shift"]), rtol=0, atol=0) \
        if pipe.shift.device.type != "meta" else None


@pytest.mark.parametrize("T", list(range(1, 40)) + [51, 68, 100])
def test_latent_length_formula(T):
    pipe = VideoVAEPipeline.from_config_dict(RELEASED_CONFIG, device="meta")
    expected = 5 * (T // 17) + math.ceil((T % 17) / 4)
    assert pipe.get_latent_size([T, 256, 256]) == [expected, 32, 32]
    pipe.micro_frame_size = None
    assert pipe.get_latent_size([T, 256, 256])[0] == math.ceil(T / 4)


@pytest.mark.parametrize("T", [1, 5, 17, 18, 35])
def test_micro_frame_chunks_are_independent(tiny_pipeline, T):
    """The latent of a T-frame clip is the concatenation of its 17-frame chunks' latents."""
    x = torch.rand(1, 3, T, 64, 64, generator=torch.Generator().manual_seed(T)) * 2 - 1
    with torch.no_grad():
        z = tiny_pipeline.encode(x, sample=False)
        parts = [tiny_pipeline.encode(x[:, :, s:s + 17], sample=False) for s in range(0, T, 17)]
        rec = tiny_pipeline.decode(z, num_frames=T)
        rec_parts = torch.cat([tiny_pipeline.decode(p, num_frames=min(17, T - 17 * i))
                               for i, p in enumerate(parts)], dim=2)
    assert z.shape[2] == 5 * (T // 17) + math.ceil((T % 17) / 4)
    torch.testing.assert_close(z, torch.cat(parts, dim=2), rtol=0, atol=1e-4)
    assert rec.shape == x.shape
    torch.testing.assert_close(rec, rec_parts, rtol=0, atol=1e-4)


def test_forward_returns_unnormalised_training_outputs(tiny_pipeline):
    x = torch.rand(2, 3, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        x_rec, x_z_rec, z, posterior, x_z = tiny_pipeline(x, sample=False)
        z_norm = tiny_pipeline.encode(x, sample=False)
        x_dec = tiny_pipeline.decode(z_norm, num_frames=9)
    assert x_z.shape == (2, 4, 9, 8, 8) and x_z_rec.shape == x_z.shape and z.shape == (2, 4, 3, 8, 8)
    torch.testing.assert_close(tiny_pipeline.normalize(z), z_norm, rtol=0, atol=1e-6)
    torch.testing.assert_close(x_rec, x_dec, rtol=0, atol=1e-4)
    assert torch.equal(posterior.mode(), z)
    _, _, _, _, x_z_mode = tiny_pipeline(x, sample=False, decode_pixels=False)
    torch.testing.assert_close(x_z_mode, x_z)


def test_sampling_is_seeded_and_mode_is_deterministic(tiny_pipeline):
    x = torch.rand(1, 3, 5, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a = tiny_pipeline.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        b = tiny_pipeline.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        c = tiny_pipeline.encode(x, sample=False)
        d = tiny_pipeline.encode(x, sample=False)
    assert torch.equal(a, b) and torch.equal(c, d) and not torch.equal(a, c)


def test_reconstruct_equals_decode_of_encode(tiny_pipeline):
    x = torch.rand(1, 3, 20, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        full = tiny_pipeline.decode(tiny_pipeline.encode(x, sample=False), num_frames=20)
        chunked = tiny_pipeline.reconstruct(x)
        spatial = tiny_pipeline.reconstruct(x, spatial_only=True)
        spatial_ref = tiny_pipeline.spatial_vae.decode(tiny_pipeline.spatial_vae.encode(x, sample=False))
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-4)
    torch.testing.assert_close(spatial, spatial_ref, rtol=0, atol=1e-4)


def test_save_pretrained_round_trip_is_bit_exact(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "ckpt")
    loaded = VideoVAEPipeline.from_pretrained(tmp_path / "ckpt").eval()
    for (k, a), (k2, b) in zip(tiny_pipeline.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.rand(1, 3, 18, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tiny_pipeline.encode(x, sample=False), loaded.encode(x, sample=False))
        z = tiny_pipeline.encode(x, sample=False)
        assert torch.equal(tiny_pipeline.decode(z, 18), loaded.decode(z, 18))
    assert loaded.micro_frame_size == 17 and loaded.spatial_vae.micro_batch_size == 4
    overridden = VideoVAEPipeline.from_pretrained(tmp_path / "ckpt", micro_frame_size=None, micro_batch_size=2)
    assert overridden.micro_frame_size is None and overridden.spatial_vae.micro_batch_size == 2


def test_released_format_config_builds_sdxl_architecture():
    pipe = VideoVAEPipeline.from_config_dict(RELEASED_CONFIG, device="meta")
    cfg = pipe.spatial_vae.module.config
    assert list(cfg.block_out_channels) == [128, 256, 512, 512] and cfg.layers_per_block == 2
    assert pipe.temporal_vae.config["filters"] == 128 and pipe.micro_frame_size == 17


def test_load_errors_are_clear(tmp_path, tiny_pipeline):
    with pytest.raises(CheckpointError, match="lacks config.json, model.safetensors"):
        VideoVAEPipeline.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        VideoVAEPipeline.from_pretrained("no-such-owner/no-such-model")
    with pytest.raises(CheckpointError, match="does not exist"):
        VideoVAEPipeline.from_pretrained(str(tmp_path / "missing" / "dir"))
    tiny_pipeline.save_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        VideoVAEPipeline.from_pretrained(tmp_path / "ok")
    # a tiny checkpoint does not fit the full-size architecture
    tiny_pipeline.save_pretrained(tmp_path / "tiny")
    from opensora_vae.models.checkpoint_io import load_state_dict_file, load_weights_into
    big = VideoVAEPipeline.from_config_dict(RELEASED_CONFIG, device="meta")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights_into(big, load_state_dict_file(tmp_path / "tiny" / "model.safetensors"), "tiny", assign=True)


def test_missing_spatial_weights_say_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"):
        SpatialVAE.from_pretrained(str(tmp_path / "nothing_here"), subfolder="vae")


def test_frozen_spatial_gets_no_gradient():
    pipe = build_tiny_pipeline(freeze_spatial=True).train()
    assert not pipe.spatial_vae.training and pipe.temporal_vae.training
    x = torch.rand(1, 3, 5, 64, 64) * 2 - 1
    x_rec, x_z_rec, z, post, x_z = pipe(x)
    (x_rec.abs().mean() + x_z_rec.abs().mean()).backward()
    assert all(p.grad is None for p in pipe.spatial_vae.parameters())
    assert pipe.temporal_vae.encoder.conv_in.conv.weight.grad.abs().sum() > 0


def test_training_step_dirs_load_and_run_dirs_are_refused(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "run" / "step_000000010" / "model")
    tiny_pipeline.save_pretrained(tmp_path / "run" / "step_000000020" / "model")
    loaded = VideoVAEPipeline.from_pretrained(tmp_path / "run" / "step_000000020")
    for a, b in zip(tiny_pipeline.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="training run dir with 2 checkpoints.*step_000000020"):
        VideoVAEPipeline.from_pretrained(tmp_path / "run")
