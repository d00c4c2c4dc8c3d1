"""AutoencoderKLOpenSora: diffusers' interface over the pipeline, loading every checkpoint layout."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from opensora_vae.models import VideoVAEPipeline
from opensora_vae.models.diffusers_vae import AutoencoderKLOpenSora
from tests.models.test_pipeline import RELEASED_CONFIG


@pytest.fixture
def clip():
    return torch.rand(2, 3, 21, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _same_as_pipeline(model: AutoencoderKLOpenSora, pipe: VideoVAEPipeline, x: torch.Tensor) -> None:
    with torch.no_grad():
        out = model.encode(x)
        assert isinstance(out, AutoencoderKLOutput) and isinstance(out.latent_dist, DiagonalGaussianDistribution)
        mean = torch.tensor(model.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(model.config.latents_std).view(1, -1, 1, 1, 1)
        assert model.config.scaling_factor == 1.0
        ours = pipe.encode(x, sample=False)
        assert torch.equal((out.latent_dist.mode() - mean) * model.config.scaling_factor / std, ours)
        dec = model.decode(pipe.denormalize(ours), num_frames=x.shape[2])
        assert isinstance(dec, DecoderOutput) and torch.equal(dec.sample, pipe.decode(ours, x.shape[2]))
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        assert torch.equal(out.latent_dist.sample(g1), pipe.encode_temporal(pipe.encode_spatial(x, False)).sample(g2))


def test_save_pretrained_round_trip_through_diffusers_equals_the_pipeline(tiny_pipeline, tmp_path, clip):
    model = AutoencoderKLOpenSora.from_pipeline(tiny_pipeline)
    model.save_pretrained(tmp_path / "diffusers")
    saved = json.loads((tmp_path / "diffusers" / "config.json").read_text())
    assert saved["_class_name"] == "AutoencoderKLOpenSora"
    assert saved["latents_mean"] == tiny_pipeline.shift.flatten().tolist()
    assert (tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AutoencoderKLOpenSora.from_pretrained(tmp_path / "diffusers")  # diffusers' ModelMixin loader
    loaded.eval()
    _same_as_pipeline(loaded, tiny_pipeline, clip)
    # diffusers' own entry points on the base classes load it too
    from diffusers import ModelMixin

    again = ModelMixin.from_pretrained.__func__(AutoencoderKLOpenSora, tmp_path / "diffusers").eval()
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), loaded.state_dict().values()))


def test_loads_step_dirs_and_the_released_layout_unchanged(tiny_pipeline, tmp_path, clip):
    tiny_pipeline.save_pretrained(tmp_path / "step_000000010" / "model")
    model = AutoencoderKLOpenSora.from_pretrained(tmp_path / "step_000000010").eval()
    _same_as_pipeline(model, tiny_pipeline, clip)
    half = AutoencoderKLOpenSora.from_pretrained(tmp_path, subfolder="step_000000010/model", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="only apply to folders saved by"):
        AutoencoderKLOpenSora.from_pretrained(tmp_path / "step_000000010", variant="fp16")
    # the released config.json format (VAE_Temporal_SD, vae_2d without "config"), tiny sizes
    tiny = tiny_pipeline.export_config()
    released = {**RELEASED_CONFIG, "vae_2d": {**RELEASED_CONFIG["vae_2d"], "config": tiny["vae_2d"]["config"]},
                "vae_temporal": {**RELEASED_CONFIG["vae_temporal"],
                                 **{k: v for k, v in tiny["vae_temporal"].items() if k != "type"}},
                "auto_map": {"AutoModel": "modeling.VideoAutoencoderPipeline"}, "torch_dtype": "float32"}
    folder = tmp_path / "released"
    tiny_pipeline.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(released))
    model = AutoencoderKLOpenSora.from_pretrained(folder).eval()
    assert list(model.config.latents_mean) == pytest.approx(RELEASED_CONFIG["shift"], abs=1e-7)  # float32 buffer
    _same_as_pipeline(model, VideoVAEPipeline.from_pretrained(folder).eval(), clip)


def test_full_size_model_has_the_released_state_dict(assets_dir):
    ref = json.loads((assets_dir / "opensora_vae_v1_2_state_dict.json").read_text())
    with torch.device("meta"):
        model = AutoencoderKLOpenSora(vae_2d=RELEASED_CONFIG["vae_2d"], vae_temporal=RELEASED_CONFIG["vae_temporal"])
    assert [[k, list(v.shape)] for k, v in model.pipeline.state_dict().items()] == ref["keys"]
    assert list(model.config.latents_std) == RELEASED_CONFIG["scale"]


def test_tiling_and_slicing(tiny_pipeline, clip):
    model = AutoencoderKLOpenSora.from_pipeline(tiny_pipeline).eval()
    with torch.no_grad():
        full = model.encode(clip).latent_dist.mode()
        model.enable_slicing()
        sliced = model.encode(clip).latent_dist.mode()
        assert torch.allclose(sliced, full, atol=1e-5)
        frames = model.frames_for(sliced.shape[2])
        one_by_one = model.decode(sliced).sample
        assert one_by_one.shape == (2, 3, frames, 32, 32)
        model.disable_slicing()
        # the batch at once: other float sums in batched kernels (|x| up to ~3)
        assert torch.allclose(one_by_one, model.decode(sliced).sample, atol=1e-4, rtol=0)
        for i in range(2):  # each element alone is exactly the pipeline's decode of it
            own = tiny_pipeline.spatial_vae.decode(tiny_pipeline.decode_temporal(sliced[i:i + 1], frames))
            assert torch.equal(one_by_one[i:i + 1], own)
        model.enable_tiling(temporal_tile=2, temporal_overlap=1)
        assert model.pipeline.temporal_tile == 2
        tiled = model.encode(clip).latent_dist
        own = tiny_pipeline.encode_temporal(tiny_pipeline.encode_spatial(clip, sample=False))
        assert torch.equal(tiled.mode(), own.mean) and torch.equal(tiled.logvar, own.logvar)
        assert not torch.equal(tiled.mode(), full)  # the tiles are really used
        model.disable_tiling()
        assert model.pipeline.temporal_tile is None
    # 17 frames -> 5 latents, 18..21 -> 6 (17 + a causal chunk of 1..4): the most frames for each
    assert [model.frames_for(n) for n in (1, 5, 6, 7)] == [4, 17, 21, 25]  # images: pass num_frames=1
    with pytest.raises(ValueError, match="one value"):
        AutoencoderKLOpenSora(latents_mean=[0.0, 0.0, 0.0, 0.0], vae_2d={"config": tiny_pipeline.export_config()["vae_2d"]["config"]})


def test_decode_without_frame_count_follows_the_temporal_downsample():
    """A temporal VAE with 8x time compression (three downsamples) over whole clips: `frames_for`
    must use its factor, not the released 4x."""
    from opensora_vae.config import load_config
    from tests.helpers import TINY_STAGE1, build_tiny_pipeline

    temporal = {**load_config(TINY_STAGE1).model.temporal.to_dict(), "temporal_downsample": (True, True, True)}
    pipe = build_tiny_pipeline(micro_frame_size=None, temporal=temporal).eval()
    assert pipe.temporal_vae.time_downsample_factor == 8
    model = AutoencoderKLOpenSora.from_pipeline(pipe).eval()
    x = torch.rand(1, 3, 16, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).latent_dist.mode()
        assert z.shape[2] == 2 and model.frames_for(2) == 16
        assert torch.equal(model.decode(z).sample, model.decode(z, num_frames=16).sample)
