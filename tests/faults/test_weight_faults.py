"""Weights files planted or damaged on the machine: nothing in them runs, and a bad file is refused
with a one-line error (or, where the loader is safe, simply fails to load).

Each planted file is a real torch checkpoint (zip + pickle) with tensors plus one object whose
`__reduce__` writes a marker file when unpickled: the marker must never appear."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from opensora_vae import lpips as lb
from opensora_vae.errors import UserError
from opensora_vae import weights
from opensora_vae.weights import sha256_of
from tests.helpers import CLIP_17, EVAL_ENTRY, run_entry


class _WritesMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def plant_pth(path: Path, marker: Path, tensors: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(tensors or {"features.0.weight": torch.zeros(64, 3, 11, 11)})
    state["features.0.bias"] = _WritesMarker(marker)
    torch.save(state, path)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME and weights folder: only what a test plants is there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(lb.WEIGHTS_DIR_ENV, str(tmp_path / "no_converted"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_planted_torchvision_backbone_runs_nothing(torch_home, tmp_path, net):
    marker = tmp_path / "marker"
    plant_pth(torch_home / lb.TORCHVISION_FILES[net], marker)
    assert lb.find_backbone(net)[0] == "torchvision"
    with pytest.raises(weights.WeightsIntegrityError):
        lb.build_lpips(net)
    assert not marker.exists()


def test_planted_file_with_a_matching_hash_is_still_not_unpickled(tmp_path):
    """The name's hash prefix is 32 bits (forgeable): weights_only is what stops the code."""
    marker = tmp_path / "marker"
    planted = plant_pth(tmp_path / "x.pth", marker)
    named = planted.rename(tmp_path / f"alexnet-owt-{sha256_of(planted)[:8]}.pth")
    with pytest.raises(weights.WeightsIntegrityError):
        weights.load_hub_state_dict(named)
    assert not marker.exists()


def test_genuine_hub_file_loads(torch_home, monkeypatch):
    """A torchvision-layout file whose name carries its hash loads into LPIPS, tensors intact."""
    rng = torch.Generator().manual_seed(0)
    reference = lb.build_lpips("alex", allow_random_backbone=True)
    state = {f"features.{i}.{kind}": torch.randn(p.shape, generator=rng)
             for name, p in reference.net.named_parameters()
             for i, kind in [name.split(".")[1:]]}
    state["classifier.1.weight"] = torch.zeros(4096, 9216)  # torchvision's head: not LPIPS's
    tmp = torch_home / "tmp.pth"
    tmp.parent.mkdir(parents=True)
    torch.save(state, tmp)
    name = f"alexnet-owt-{sha256_of(tmp)[:8]}.pth"
    tmp.rename(torch_home / name)
    monkeypatch.setitem(lb.TORCHVISION_FILES, "alex", name)
    model = lb.build_lpips("alex")
    assert torch.equal(getattr(model.net.slice3, "6").weight, state["features.6.weight"])


def test_damaged_hub_file_is_refused(torch_home):
    path = torch_home / lb.TORCHVISION_FILES["alex"]
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(weights.WeightsIntegrityError, match="sha256"):
        lb.build_lpips("alex")


def test_damaged_converted_file_is_refused(torch_home):
    path = lb.converted_backbone_path("alex")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(weights.WeightsIntegrityError, match="safetensors"):
        lb.build_lpips("alex")


def test_stage3_perceptual_loss_with_planted_vgg_runs_nothing(torch_home, tmp_path):
    from opensora_vae.losses import build_perceptual

    marker = tmp_path / "marker"
    plant_pth(torch_home / lb.TORCHVISION_FILES["vgg"], marker)
    with pytest.raises(UserError):
        build_perceptual()
    assert not marker.exists()


def test_eval_lpips_with_planted_alexnet_runs_nothing(torch_home, tmp_path):
    from opensora_vae.data.video_io import read_video_frames, write_video

    marker = tmp_path / "marker"
    plant_pth(torch_home / lb.TORCHVISION_FILES["alex"], marker)
    clip = read_video_frames(CLIP_17, range(2))[:, :32, :32]
    for side in ("real", "gen"):
        (tmp_path / side).mkdir()
        write_video(tmp_path / side / "a.mp4", clip, 24, lossless=True)
    code = run_entry(EVAL_ENTRY, ["--real_video_dir", tmp_path / "real", "--generated_video_dir", tmp_path / "gen",
                                  "--num_frames", 2, "--resolution", 32, "--device", "cpu", "--metric", "lpips",
                                  "--no_progress"])
    assert code == 2
    assert not marker.exists()


def test_pwcnet_planted_file_runs_nothing(tmp_path):
    """Audit: the PWC-Net loader unpickles with weights_only=True."""
    from opensora_vae.metrics.pwcnet import build_pwcnet

    marker = tmp_path / "marker"
    planted = plant_pth(tmp_path / "network-default.pytorch", marker)
    with pytest.raises(Exception):
        build_pwcnet(planted)
    assert not marker.exists()


def test_diffusers_planted_bin_runs_nothing(tmp_path):
    """Audit: diffusers reads a `diffusion_pytorch_model.bin` with weights_only=True."""
    from diffusers import AutoencoderKL

    from opensora_vae.errors import MissingWeightsError
    from opensora_vae.models.spatial import SpatialVAE

    marker = tmp_path / "marker"
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    folder = tmp_path / "vae"
    vae.save_config(folder)
    plant_pth(folder / "diffusion_pytorch_model.bin", marker, tensors=vae.state_dict())
    with pytest.raises(MissingWeightsError):
        SpatialVAE.from_pretrained(str(folder), local_files_only=True)
    assert not marker.exists()


def test_weights_folder_variable_and_default(tmp_path, monkeypatch, caplog):
    """One folder for every converted weight, named for what it holds (issue 18.8):
    $OPENSORA_VAE_WEIGHTS_DIR, default ~/.cache/opensora_vae/weights; the old
    $OPENSORA_VAE_LPIPS_DIR still works (with a deprecation warning), and an existing install in the
    old default folder (~/.cache/opensora_vae/lpips_backbones) is still found."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENSORA_VAE_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("OPENSORA_VAE_LPIPS_DIR", raising=False)
    cache = tmp_path / "home" / ".cache" / "opensora_vae"
    assert weights.WEIGHTS_DIR_ENV == "OPENSORA_VAE_WEIGHTS_DIR"
    assert weights.weights_dir() == cache / "weights"  # a fresh machine
    (cache / "lpips_backbones").mkdir(parents=True)
    assert weights.weights_dir() == cache / "lpips_backbones"  # an earlier install is kept in use
    (cache / "weights").mkdir()
    assert weights.weights_dir() == cache / "weights"
    monkeypatch.setenv("OPENSORA_VAE_LPIPS_DIR", str(tmp_path / "old_var"))
    weights._warn_deprecated_variable.cache_clear()
    with caplog.at_level("WARNING"):
        assert weights.weights_dir() == tmp_path / "old_var"
    assert "OPENSORA_VAE_WEIGHTS_DIR" in caplog.text  # the deprecation note names the new variable
    monkeypatch.setenv("OPENSORA_VAE_WEIGHTS_DIR", str(tmp_path / "new_var"))
    assert weights.weights_dir() == tmp_path / "new_var"
