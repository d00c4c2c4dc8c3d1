"""SSIM and PSNR against scikit-image on real frames of the bundled clip."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from opensora_vae.data.video_io import read_video_frames
from opensora_vae.metrics import psnr, ssim
from tests.helpers import CLIP_17

CLIP = str(CLIP_17)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """Four real frames, cropped to a non-square 200x240 so H/W mix-ups show."""
    f = read_video_frames(CLIP, [0, 5, 10, 16])[:, 10:210, 8:248]
    return torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255.0


def _degradations(x: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    blurred = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.2, 1.2))
    return {
        "noise": (x + 0.04 * torch.randn(x.shape, generator=g)).clamp(0, 1),
        "blur": torch.from_numpy(blurred),
        "quantise": torch.round(x * 15) / 15,  # coarse levels, like heavy JPEG banding
        "shift": torch.roll(x, shifts=(2, -3), dims=(2, 3)),
    }


def _skimage_ssim(real: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    out = []
    for r, f in zip(real.double().numpy(), fake.double().numpy()):
        per_channel = [
            structural_similarity(r[c], f[c], gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=1.0)
            for c in range(r.shape[0])
        ]
        out.append(np.mean(per_channel))
    return np.array(out)


@pytest.mark.parametrize("kind", ["noise", "blur", "quantise", "shift"])
@pytest.mark.parametrize("backend", ["blas", "torch"])
def test_ssim_matches_skimage(frames, kind, backend):
    fake = _degradations(frames)[kind]
    ours = ssim(frames, fake, backend=backend)
    assert ours.dtype == torch.float64 and ours.shape == (4,)
    np.testing.assert_allclose(ours.numpy(), _skimage_ssim(frames, fake), rtol=0, atol=1e-6)
    assert (ours < 0.999).all()


def test_ssim_valid_region_is_a_2d_gaussian_without_padding(frames):
    """The definition itself: 11x11 window, moments only where it fits, odd sizes."""
    real, fake = frames[:1, :, :37, :50], _degradations(frames)["noise"][:1, :, :37, :50]
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    x, y = real[0].double().numpy(), fake[0].double().numpy()
    vals = []
    for c in range(3):
        def local_mean(img):
            h, w = img.shape
            return np.array([[np.sum(img[i:i + 11, j:j + 11] * window) for j in range(w - 10)]
                             for i in range(h - 10)])
        mx, my = local_mean(x[c]), local_mean(y[c])
        vx, vy = local_mean(x[c] ** 2) - mx**2, local_mean(y[c] ** 2) - my**2
        cov = local_mean(x[c] * y[c]) - mx * my
        smap = ((2 * mx * my + 1e-4) * (2 * cov + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
        vals.append(smap.mean())
    assert ssim(real, fake).item() == pytest.approx(np.mean(vals), abs=1e-12)


def test_ssim_identical_is_one_and_batching_is_invisible(frames, monkeypatch):
    assert torch.allclose(ssim(frames, frames), torch.ones(4, dtype=torch.float64), atol=1e-12)
    fake = _degradations(frames)["noise"]
    # CPU: each frame alone, bit for bit (the eval scores pairs in any grouping).
    whole = ssim(frames, fake, backend="blas")
    for i in range(frames.shape[0]):
        assert torch.equal(ssim(frames[i : i + 1], fake[i : i + 1], backend="blas"), whole[i : i + 1])
    import importlib

    ssim_module = importlib.import_module("opensora_vae.metrics.ssim")  # the package re-exports the function
    monkeypatch.setattr(ssim_module, "_GPU_CHUNK_VALUES", 10**9)  # all frames at once
    whole = ssim(frames, fake, backend="torch")
    monkeypatch.setattr(ssim_module, "_GPU_CHUNK_VALUES", 1)  # one frame per chunk
    assert torch.equal(ssim(frames, fake, backend="torch"), whole)


def test_ssim_values_do_not_depend_on_blas_threads(frames):
    """The eval limits BLAS to one thread per decode worker; a direct call may use them all."""
    from threadpoolctl import threadpool_limits

    fake = _degradations(frames)["blur"]
    free = ssim(frames, fake, backend="blas")
    with threadpool_limits(1, user_api="blas"):
        assert torch.equal(ssim(frames, fake, backend="blas"), free)


@pytest.mark.parametrize("size", [(11, 11), (11, 75), (43, 42), (77, 12)])
def test_ssim_band_filter_equals_direct_correlation(size):
    """Block edges of the banded products: sizes below, at and across the 32-wide blocks."""
    from opensora_vae.metrics.ssim import _BandFilter, gaussian_window_1d

    planes = np.random.default_rng(1).random((4, *size))
    h, w = size
    out = _BandFilter()(planes, np.empty((4, h, w - 10)), np.empty((4, h - 10, w - 10)))
    g = gaussian_window_1d()
    direct = ndimage.correlate(planes, np.outer(g, g)[None], mode="constant")[:, 5 : h - 5, 5 : w - 5]
    np.testing.assert_allclose(out, direct, rtol=0, atol=1e-14)


def test_ssim_rejects_bad_input(frames):
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(frames, frames[:, :, :-1])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(frames[:, :, :10, :10], frames[:, :, :10, :10])


@pytest.mark.parametrize("kind", ["noise", "blur", "quantise", "shift"])
def test_psnr_matches_skimage(frames, kind):
    fake = _degradations(frames)[kind]
    ours = psnr(frames, fake)
    expected = [peak_signal_noise_ratio(r, f, data_range=1.0)
                for r, f in zip(frames.double().numpy(), fake.double().numpy())]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-9)


def test_psnr_cap_for_identical_and_near_identical(frames):
    near = frames.double() + 1e-6  # mse = 1e-12 < 1e-10
    values = psnr(frames.double(), near)
    assert values.tolist() == [100.0] * 4
    assert psnr(frames, frames).tolist() == [100.0] * 4
    # Just above the floor: the formula, not the cap.
    just_above = frames.double() + 2e-5  # mse = 4e-10
    assert psnr(frames.double(), just_above)[0].item() == pytest.approx(20 * np.log10(1 / 2e-5), abs=1e-6)
