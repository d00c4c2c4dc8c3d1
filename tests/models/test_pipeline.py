"""Pipeline: released key layout, chunk arithmetic, save/load round trip, clear load errors."""

import inspect
import json
import math
import os

import pytest
import torch
from mmengine.config import Config

from tests.helpers import build_tiny_pipeline
from opensora_vae.models import (RELEASED_REPO, SCALE, SHIFT, CheckpointError, PipelineOutput, SpatialVAE,
                                 TemporalVAE, VideoVAEPipeline)
from opensora_vae.models.spatial import DEFAULT_SPATIAL_REPO, SCALING_FACTOR

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
    pipe = VideoVAEPipeline.from_config(RELEASED_CONFIG, device="meta")
    ours = [[k, list(v.shape)] for k, v in pipe.state_dict().items()]
    assert ours == ref["keys"]  # same keys, same shapes, same order
    assert sum(v.numel() for v in pipe.state_dict().values()) == ref["total_params"]
    assert sum(p.numel() for p in pipe.temporal_vae.parameters()) == ref["temporal_params"]
    assert sum(p.numel() for p in pipe.spatial_vae.parameters()) == ref["spatial_params"]
    assert pipe.spatial_vae.scaling_factor == 0.18215


def test_released_config_values_reach_the_model(tiny_pipeline):
    """The released config.json's format (VAE_Temporal_SD, vae_2d without sizes) built for real on
    the CPU: only the architecture is swapped for the tiny one, so buffers hold actual values."""
    tiny = tiny_pipeline.export_config()
    sizes = {k: v for k, v in tiny["vae_temporal"].items() if k != "type"}
    config = {**RELEASED_CONFIG, "vae_2d": {**RELEASED_CONFIG["vae_2d"], "config": tiny["vae_2d"]["config"]},
              "vae_temporal": {**RELEASED_CONFIG["vae_temporal"], **sizes}}
    pipe = VideoVAEPipeline.from_config(config)
    assert pipe.shift.device.type == "cpu"
    assert torch.equal(pipe.shift.flatten(), torch.tensor(RELEASED_CONFIG["shift"]))
    assert torch.equal(pipe.scale.flatten(), torch.tensor(RELEASED_CONFIG["scale"]))
    assert pipe.micro_frame_size == 17 and pipe.spatial_vae.micro_batch_size == 4
    assert pipe.temporal_vae.config == tiny_pipeline.temporal_vae.config
    # a config.json without them takes the released statistics, the code's one copy
    del config["shift"], config["scale"]
    pipe = VideoVAEPipeline.from_config(config, freeze_spatial=True)
    assert torch.equal(pipe.shift.flatten(), torch.tensor(SHIFT)) and torch.equal(pipe.scale.flatten(), torch.tensor(SCALE))
    assert pipe.freeze_spatial and not any(p.requires_grad for p in pipe.spatial_vae.parameters())


def test_released_constants_come_from_the_config_files(repo_dir, monkeypatch, tiny_pipeline):
    """The config files are the one source of the released model's values: the names code keeps
    (SHIFT, SCALE, SCALING_FACTOR, DEFAULT_SPATIAL_REPO, RELEASED_REPO) read them, and a
    config.json without sizes gets the schema's (issue 18.5)."""
    model = Config.fromfile(str(repo_dir / "configs/vae/_base_/model_v1_2.py")).model.to_dict()
    assert (SHIFT, SCALE) == (tuple(model["shift"]), tuple(model["scale"]))
    assert (SCALING_FACTOR, DEFAULT_SPATIAL_REPO) == (model["spatial"]["scaling_factor"], model["spatial"]["from_pretrained"])
    video = Config.fromfile(str(repo_dir / "configs/vae/inference/video.py"))
    assert RELEASED_REPO == video.ckpt_path == Config.fromfile(str(repo_dir / "configs/vae/inference/image.py")).ckpt_path
    for fn in (TemporalVAE.__init__, VideoVAEPipeline.__init__):  # sizes and statistics are arguments
        params = inspect.signature(fn).parameters
        assert all(params[k].default is inspect.Parameter.empty for k in params
                   if k in model["temporal"] or k in ("micro_frame_size", "shift", "scale"))
    # A changed schema value reaches a model built from a config.json that lacks it.
    import opensora_vae.models.pipeline as pipeline_module

    changed = {**model, "shift": [1.0, 2.0, 3.0, 4.0], "temporal": {**model["temporal"], "filters": 64}}
    monkeypatch.setattr(pipeline_module, "model_defaults", lambda: __import__("copy").deepcopy(changed))
    config = tiny_pipeline.export_config()
    del config["shift"], config["vae_temporal"]["filters"]
    pipe = VideoVAEPipeline.from_config(config)
    assert pipe.shift.flatten().tolist() == [1.0, 2.0, 3.0, 4.0] and pipe.temporal_vae.config["filters"] == 64


@pytest.mark.parametrize("T", list(range(1, 40)) + [51, 68, 100])
def test_latent_length_formula(T):
    pipe = VideoVAEPipeline.from_config(RELEASED_CONFIG, device="meta")
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
        out = tiny_pipeline(x, sample=False)
        z_norm = tiny_pipeline.encode(x, sample=False)
        x_dec = tiny_pipeline.decode(z_norm, num_frames=9)
        latent_only = tiny_pipeline(x, sample=False, decode_pixels=False)
    assert isinstance(out, PipelineOutput)
    assert out.x_z.shape == (2, 4, 9, 8, 8) and out.x_z_rec.shape == out.x_z.shape
    assert out.z.shape == (2, 4, 3, 8, 8)
    torch.testing.assert_close(tiny_pipeline.normalize(out.z), z_norm, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.x_rec, x_dec, rtol=0, atol=1e-4)
    assert torch.equal(out.posterior.mode(), out.z)
    assert latent_only.x_rec is None
    torch.testing.assert_close(latent_only.x_z, out.x_z)


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
        chunked = tiny_pipeline.reconstruct(x).rec
        spatial = tiny_pipeline.reconstruct(x, rec=False, spatial=True).spatial
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


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_follow_the_umask(tiny_pipeline, tmp_path, umask):
    """model.safetensors gets the mode of every other file (safetensors itself writes 0600)."""
    old = os.umask(umask)
    try:
        tiny_pipeline.save_pretrained(tmp_path / "ckpt")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {"config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask}


def test_released_format_config_builds_sdxl_architecture():
    pipe = VideoVAEPipeline.from_config(RELEASED_CONFIG, device="meta")
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
    big = VideoVAEPipeline.from_config(RELEASED_CONFIG, device="meta")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights_into(big, load_state_dict_file(tmp_path / "tiny" / "model.safetensors"), "tiny", assign=True)


def test_missing_spatial_weights_say_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"):
        SpatialVAE.from_pretrained(str(tmp_path / "nothing_here"), subfolder="vae")


def test_frozen_spatial_gets_no_gradient():
    pipe = build_tiny_pipeline(freeze_spatial=True).train()
    assert not pipe.spatial_vae.training and pipe.temporal_vae.training
    x = torch.rand(1, 3, 5, 64, 64) * 2 - 1
    out = pipe(x)
    (out.x_rec.abs().mean() + out.x_z_rec.abs().mean()).backward()
    assert all(p.grad is None for p in pipe.spatial_vae.parameters())
    assert pipe.temporal_vae.encoder.conv_in.conv.weight.grad.abs().sum() > 0
    pipe.set_freeze_spatial(False)  # stage 0 of the quickstart trains it
    assert pipe.spatial_vae.training and all(p.requires_grad for p in pipe.spatial_vae.parameters())
    pipe.set_freeze_spatial(True)
    assert not pipe.spatial_vae.training and not any(p.requires_grad for p in pipe.spatial_vae.parameters())


def test_training_step_dirs_load_and_run_dirs_are_refused(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "run" / "step_000000010" / "model")
    tiny_pipeline.save_pretrained(tmp_path / "run" / "step_000000020" / "model")
    loaded = VideoVAEPipeline.from_pretrained(tmp_path / "run" / "step_000000020")
    for a, b in zip(tiny_pipeline.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="training run dir with 2 checkpoints.*step_000000020"):
        VideoVAEPipeline.from_pretrained(tmp_path / "run")


@pytest.mark.parametrize("section,key,value", [
    ("vae_temporal", "num_groups", 0),  # was ZeroDivisionError
    ("vae_temporal", "num_groups", 7),  # does not divide the channels
    ("vae_temporal", "filters", -16),
    ("vae_temporal", "filters", 10 ** 9),  # absurd: the size ceiling
    ("vae_temporal", "num_res_blocks", 0),
    ("vae_temporal", "channel_multipliers", []),
    ("vae_temporal", "channel_multipliers", [1, 0, 2, 2]),
    ("vae_temporal", "temporal_downsample", [True]),
    ("vae_temporal", "filters", "16"),
    ("vae_2d.config", "norm_num_groups", 0),
    ("vae_2d.config", "block_out_channels", [16, -32, 32, 32]),
    ("vae_2d.config", "block_out_channels", [10 ** 8, 32, 32, 32]),
    ("vae_2d.config", "latent_channels", 0),
    ("vae_2d.config", "layers_per_block", -1),
    ("vae_2d", "micro_batch_size", 0),
    ("vae_2d", "scaling_factor", 0),
    ("", "micro_frame_size", 0),
    ("", "micro_frame_size", 2.5),
    ("", "scale", [1.0, 0.0, 1.0, 1.0]),
    ("", "shift", [0.0, 0.0]),  # one value per latent channel (4)
])
def test_config_json_with_bad_sizes_is_refused_before_building(tiny_pipeline, tmp_path, section, key, value):
    """Issue 19.10: checked before anything is built, naming the key (was ZeroDivisionError/RuntimeError)."""
    tiny_pipeline.save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    node = config
    for part in filter(None, section.split(".")):
        node = node[part]
    node[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"does not describe a pipeline this code can build.*{key}"):
        VideoVAEPipeline.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["./ckpts/run1", "../ckpts/run1", "~/no_such_ckpt_dir", "ckpts/run1/step_000000010",
                                  "/abs/no/such", "ckpts/run1/"])
def test_missing_local_path_is_not_treated_as_a_hub_id(name, tmp_path, monkeypatch):
    """Issue 19.11: a path-looking string that does not exist says what was looked for, where,
    instead of suggesting `huggingface-cli download`."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as err:
        VideoVAEPipeline.from_pretrained(name)
    message = str(err.value)
    assert "huggingface-cli" not in message and "no such local directory (looked for " in message
    assert str((tmp_path / name).expanduser().resolve()) in message or str(__import__("pathlib").Path(name).expanduser()) in message
