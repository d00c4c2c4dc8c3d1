"""evaluate_dirs: pairing, frame selection, preprocessing, errors, values."""

import logging

import numpy as np
import pytest
import torch

from opensora_vae.data.video_io import MediaReadError, read_video_frames, write_image, write_video
from opensora_vae.lpips import build_lpips
from opensora_vae.metrics import EvalSettings, FloLPIPS, LPIPSMetric, MetricSuite, build_pwcnet, evaluate_dirs, psnr, ssim
from opensora_vae.metrics.settings import resolve_device
from opensora_vae.metrics.protocol import preprocess
from tests.helpers import CLIP_17

CLIP = str(CLIP_17)


def _evaluate(real_dir, gen_dir, suite=None, **settings):
    """evaluate_dirs with EvalSettings of these values (device cpu, 17 frames, short side 256
    unless given)."""
    settings = {"num_frames": 17, "resolution": 256, "device": "cpu", **settings}
    if "metrics" in settings:
        settings["metrics"] = tuple(settings["metrics"])
    return evaluate_dirs(real_dir, gen_dir, EvalSettings(**settings), suite=suite, progress=False)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return read_video_frames(CLIP, range(8))[:, 40:120, 20:116]  # 8 frames, 80x96


def _noisy(frames: np.ndarray, amount: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames.astype(int) + rng.integers(-amount, amount + 1, frames.shape), 0, 255).astype(np.uint8)


def _folders(tmp_path, clip, names=("a", "b", "c"), frames=8):
    real, gen = tmp_path / "real", tmp_path / "gen"
    real.mkdir(), gen.mkdir()
    for i, name in enumerate(names):
        write_video(real / f"{name}.mp4", clip[:frames], 24, lossless=True)
        write_video(gen / f"{name}.mkv", _noisy(clip[:frames], 4 + 6 * i, i), 24, lossless=True)
    return real, gen


@pytest.fixture(scope="module")
def suite():
    """All four metrics; random backbones where weights are absent (values are compared
    with direct calls of the same networks, so any weights do)."""
    torch.manual_seed(0)
    lpips_metric = LPIPSMetric(allow_random_backbone=True)
    flolpips = FloLPIPS(build_lpips("alex", allow_random_backbone=True), build_pwcnet(allow_random=True))
    return MetricSuite(EvalSettings(device="cpu"), lpips_metric=lpips_metric, flolpips=flolpips)


def test_values_equal_direct_metric_calls(tmp_path, clip, suite):
    real_dir, gen_dir = _folders(tmp_path, clip)
    res = _evaluate(real_dir, gen_dir, num_frames=6, sample_rate=1, resolution=64, crop_size=64,
                        batch_size=2, suite=suite)
    assert set(res) >= {"ssim", "psnr", "lpips", "flolpips", "per_video", "protocol", "num_videos"}
    assert res["num_videos"] == 3 and res["num_frames_evaluated"] == 18
    all_vals = {m: [] for m in ("ssim", "psnr", "lpips", "flolpips")}
    for i, name in enumerate("abc"):
        real = preprocess(clip[:6], 64, 64, torch.device("cpu"))
        fake = preprocess(_noisy(clip[:8], 4 + 6 * i, i)[:6], 64, 64, torch.device("cpu"))
        direct = {"ssim": ssim(real, fake), "psnr": psnr(real, fake), "lpips": suite.lpips(real, fake),
                  "flolpips": suite.flolpips.video(real, fake)}
        for metric, values in direct.items():
            # FloLPIPS: the runner batches pairs differently, and CPU convolutions of another
            # batch size round differently; random PWC weights amplify that to ~1e-5.
            rel = 1e-4 if metric == "flolpips" else 1e-6
            assert res["per_video"][name][metric] == pytest.approx(values.double().mean().item(), rel=rel)
            all_vals[metric] += values.tolist()
    for metric, values in all_vals.items():
        assert res[metric] == pytest.approx(np.mean(values), rel=1e-4 if metric == "flolpips" else 1e-6)
    # More noise, worse scores: the pairing is by name, not by accident.
    per = res["per_video"]
    assert per["a"]["psnr"] > per["b"]["psnr"] > per["c"]["psnr"]


def test_short_videos_warn_and_use_the_shorter(tmp_path, clip, suite, caplog):
    real_dir, gen_dir = tmp_path / "r", tmp_path / "g"
    real_dir.mkdir(), gen_dir.mkdir()
    write_video(real_dir / "v.mp4", clip[:5], 24, lossless=True)
    write_video(gen_dir / "v.mp4", clip[:5], 24, lossless=True)
    with caplog.at_level(logging.WARNING):
        res = _evaluate(real_dir, gen_dir, metrics=["psnr"], num_frames=8, resolution=None,
                            suite=MetricSuite(EvalSettings(metrics=("psnr",), device="cpu")))
    assert res["per_video"]["v"]["num_frames"] == 5
    assert "v: shorter than requested" in caplog.text and "using 5 frames" in res["warnings"][0]
    assert res["psnr"] == 100.0  # lossless copies of the same frames


def test_size_mismatch_and_image_video_mismatch(tmp_path, clip):
    real_dir, gen_dir = tmp_path / "r", tmp_path / "g"
    real_dir.mkdir(), gen_dir.mkdir()
    write_video(real_dir / "v.mp4", clip[:3], 24, lossless=True)
    write_video(gen_dir / "v.mp4", clip[:3, :64, :64], 24, lossless=True)
    with pytest.raises(ValueError, match="frame sizes differ"):
        _evaluate(real_dir, gen_dir, metrics=["psnr"], num_frames=3)
    (gen_dir / "v.mp4").unlink(), (real_dir / "v.mp4").unlink()
    write_image(gen_dir / "w.png", clip[0])
    write_video(real_dir / "w.mp4", clip[:3], 24, lossless=True)
    with pytest.raises(ValueError, match="image is paired with a video"):
        _evaluate(real_dir, gen_dir, metrics=["psnr"], num_frames=3, subset_size=None)


def test_corrupt_video_error_or_counted_skip(tmp_path, clip):
    real_dir, gen_dir = _folders(tmp_path, clip, names=("a", "b"), frames=3)
    (gen_dir / "b.mkv").write_bytes(b"\x00not a video" * 50)
    with pytest.raises(MediaReadError, match="b.mkv"):
        _evaluate(real_dir, gen_dir, metrics=["psnr"], num_frames=3)
    res = _evaluate(real_dir, gen_dir, metrics=["psnr"], num_frames=3, skip_bad=True)
    assert res["num_videos"] == 1 and res["num_skipped"] == 1
    assert res["skipped"][0]["name"] == "b" and "b.mkv" in res["skipped"][0]["reason"]
    assert list(res["per_video"]) == ["a"]


def test_images_are_one_frame_videos_without_flolpips(tmp_path, clip, suite):
    real_dir, gen_dir = tmp_path / "r", tmp_path / "g"
    real_dir.mkdir(), gen_dir.mkdir()
    for i in range(2):
        write_image(real_dir / f"im{i}.png", clip[i])
        write_image(gen_dir / f"im{i}.png", _noisy(clip[i:i + 1], 8, i)[0])
    res = _evaluate(real_dir, gen_dir, num_frames=17, resolution=None, suite=suite)
    assert res["flolpips"] is None and res["per_video"]["im0"]["flolpips"] is None
    assert any("flolpips skipped for 2" in w for w in res["warnings"])
    real = preprocess(clip[:1], None, None, torch.device("cpu"))
    fake = preprocess(_noisy(clip[:1], 8, 0), None, None, torch.device("cpu"))
    assert res["per_video"]["im0"]["ssim"] == pytest.approx(ssim(real, fake).item(), abs=1e-12)
    assert res["warnings"] == [w for w in res["warnings"] if "shorter" not in w]  # images never warn


def test_device_and_metric_validation():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown"):
        EvalSettings(metrics=("vmaf",), device="cpu")  # not a metric of this eval


def test_results_do_not_depend_on_decode_threads_or_batching(tmp_path, clip, suite):
    """Pairs are decoded and scored by SSIM/PSNR in threads, networks run on batches in order:
    every value, entry and warning is the same bit for bit whatever the thread count."""
    real_dir, gen_dir = _folders(tmp_path, clip, names=("a", "b", "c", "d", "e"), frames=3)
    runs = [_evaluate(real_dir, gen_dir, num_frames=3, resolution=None, batch_size=2, suite=suite,
                          decode_workers=workers) for workers in (1, 3)]
    assert runs[0] == runs[1]
    frame_only = [_evaluate(real_dir, gen_dir, metrics=["ssim", "psnr"], num_frames=3, resolution=None,
                                batch_size=batch, decode_workers=workers)
                  for batch, workers in ((1, 1), (4, 2))]
    assert frame_only[0] == frame_only[1]
    assert all(frame_only[0]["per_video"][n][m] == runs[0]["per_video"][n][m] for n in "abcde" for m in ("ssim", "psnr"))
