"""Inference: `_ori/_rec/_spatial` files hold exactly the input clip and the two reconstructions,
the metrics JSON matches an independent computation, bad input fails clearly or is counted."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tests.helpers import CLIP_17, CLIP_100, REPO, build_tiny_pipeline
from opensora_vae.config import ConfigError, load_config
from opensora_vae.data.transforms import center_crop_resize, frames_to_clip
from opensora_vae.data.video_io import read_image, read_video_frames, video_info
from opensora_vae.inference import (InferenceDataset, InferenceError, LatentStats, run_inference, sample_name,
                                    to_uint8_frames)
from opensora_vae.models.checkpoint_io import resolve_pipeline_dir
from opensora_vae.precision import autocast
from opensora_vae.models import CheckpointError, VideoVAEPipeline

SIZE = 64


def reference_uint8(x: torch.Tensor) -> np.ndarray:
    """The reference's save_sample: (3, T, H, W) in [-1, 1] → uint8 (T, H, W, 3)."""
    x = x.float().add(1).div(2).clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).numpy()


def expected_clip(path, indices) -> torch.Tensor:
    """(3, T, 64, 64) in [-1, 1]: the given frames, centre crop + bilinear resize."""
    clip = center_crop_resize(frames_to_clip(read_video_frames(path, indices)), SIZE)
    return (clip * 2 - 1).permute(1, 0, 2, 3)


def tiny_config(ckpt, csv, save_dir, **options):
    return load_config(REPO / "configs/vae/inference/tiny.py", kind="inference", cfg_options=options,
                       cli={"ckpt_path": str(ckpt), "data_path": str(csv), "save_dir": str(save_dir)})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny checkpoint in a training step dir, and a CSV: 17-frame clip, image, missing file,
    100-frame clip."""
    root = tmp_path_factory.mktemp("inference")
    build_tiny_pipeline(seed=3).save_pretrained(root / "run" / "step_000000010" / "model")
    rng = np.random.default_rng(0)
    image = np.clip(np.cumsum(rng.integers(-12, 13, (48, 80, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(root / "still.png")
    csv = root / "data.csv"
    csv.write_text(f"path\n{CLIP_17}\nstill.png\nmissing.mp4\n{CLIP_100}\n")
    return root


@pytest.fixture(scope="module")
def run(workspace):
    cfg = tiny_config(workspace / "run" / "step_000000010", workspace / "data.csv", workspace / "out" / "s",
                      lossless=True, save_grid=True, cal_stats=True, batch_size=2)
    report = run_inference(cfg, verbose=False)
    return workspace, report


@pytest.fixture(scope="module")
def pipe(workspace):
    return VideoVAEPipeline.from_pretrained(workspace / "run" / "step_000000010" / "model").eval()


def read_frames(path) -> np.ndarray:
    if path.suffix == ".png":
        return read_image(path)[None]
    return read_video_frames(path, range(video_info(path).num_frames))


def test_output_dirs_names_and_skips(run):
    root, report = run
    for kind in ("ori", "rec", "spatial", "grid"):
        assert sorted(p.name for p in (root / "out").glob(f"s_{kind}/*")) == ["000.mp4", "001.png", "003.mp4"]
    assert json.loads((root / "out" / "s_metrics.json").read_text())["num_samples"] == 3
    assert report["num_skipped"] == 1 and report["num_rows"] == 4
    assert report["skipped"][0]["index"] == 2 and report["skipped"][0]["path"].endswith("missing.mp4")
    assert "not found" in report["skipped"][0]["reason"]
    assert [s["num_frames"] for s in report["samples"]] == [17, 1, 17]
    grid = read_frames(root / "out" / "s_grid" / "000.mp4")
    assert grid.shape == (17, SIZE, 3 * SIZE, 3)
    np.testing.assert_array_equal(grid[:, :, :SIZE], read_frames(root / "out" / "s_ori" / "000.mp4"))
    np.testing.assert_array_equal(grid[:, :, 2 * SIZE:], read_frames(root / "out" / "s_rec" / "000.mp4"))


def test_ori_is_the_transformed_input_from_frame_zero(run):
    root, _ = run
    np.testing.assert_array_equal(read_frames(root / "out/s_ori/000.mp4"),
                                  reference_uint8(expected_clip(CLIP_17, range(17))))
    # The 100-frame clip is read from frame 0 (the eval protocol), not from a random window.
    np.testing.assert_array_equal(read_frames(root / "out/s_ori/003.mp4"),
                                  reference_uint8(expected_clip(CLIP_100, range(17))))
    image = center_crop_resize(frames_to_clip(read_image(root / "still.png")[None]), SIZE)
    ori_png = read_frames(root / "out/s_ori/001.png")
    assert ori_png.shape == (1, SIZE, SIZE, 3)
    np.testing.assert_array_equal(ori_png, reference_uint8((image * 2 - 1).permute(1, 0, 2, 3)))


@pytest.mark.parametrize("name,source", [("000.mp4", CLIP_17), ("003.mp4", CLIP_100), ("001.png", "still.png")])
def test_rec_and_spatial_equal_the_pipeline(run, pipe, name, source):
    root, _ = run
    if name.endswith(".png"):
        clip = center_crop_resize(frames_to_clip(read_image(root / source)[None]), SIZE)
        x = (clip * 2 - 1).permute(1, 0, 2, 3)
    else:
        x = expected_clip(source, range(17))
    out = pipe.reconstruct(x[None], sample=False, rec=True, spatial=True)
    for kind in ("rec", "spatial"):
        want = reference_uint8(getattr(out, kind)[0])
        got = read_frames(root / "out" / f"s_{kind}" / name).astype(int)
        assert np.abs(got - want).max() <= 1, kind  # float rounding at a .5 boundary at most
        assert (got == want).mean() > 0.999, kind
    assert not np.array_equal(read_frames(root / "out/s_rec" / name), read_frames(root / "out/s_spatial" / name))


def test_metrics_json_equals_direct_computation(run):
    root, report = run
    all_psnr = []
    for sample in report["samples"]:
        ori = read_frames(root / "out/s_ori" / f"{sample['name']}{'.png' if sample['is_image'] else '.mp4'}")
        rec = read_frames(root / "out/s_rec" / f"{sample['name']}{'.png' if sample['is_image'] else '.mp4'}")
        psnr = [peak_signal_noise_ratio(o, r, data_range=255) for o, r in zip(ori, rec)]
        ssim = [structural_similarity(o / 255.0, r / 255.0, gaussian_weights=True, sigma=1.5, data_range=1.0,
                                      use_sample_covariance=False, channel_axis=-1) for o, r in zip(ori, rec)]
        np.testing.assert_allclose(sample["rec"]["psnr_frames"], psnr, rtol=1e-9)
        np.testing.assert_allclose(sample["rec"]["ssim_frames"], ssim, rtol=1e-6)
        assert sample["rec"]["psnr"] == pytest.approx(np.mean(psnr), rel=1e-9)
        all_psnr += psnr
    assert report["mean"]["rec"]["psnr"] == pytest.approx(np.mean(all_psnr), rel=1e-9)  # over all frames
    saved = json.loads((root / "out/s_metrics.json").read_text())
    assert saved["mean"] == report["mean"] and saved["checkpoint"].endswith("step_000000010")
    assert saved["config"]["dataset"]["image_size"] == [SIZE, SIZE]


def test_metrics_json_shows_the_architecture_loaded_from_the_checkpoint(run, pipe):
    """Not the inference config's model section (the full-size default, never built here)."""
    root, report = run
    saved = json.loads((root / "out/s_metrics.json").read_text())
    assert saved["model"] == json.loads(json.dumps(pipe.export_config()))
    assert saved["model"]["vae_temporal"]["filters"] == 16  # the tiny checkpoint, not 128
    assert "model" not in saved["config"]


def test_latent_stats_equal_direct_computation(run, pipe):
    root, report = run
    image = center_crop_resize(frames_to_clip(read_image(root / "still.png")[None]), SIZE)
    clips = [expected_clip(CLIP_17, range(17)), (image * 2 - 1).permute(1, 0, 2, 3),
             expected_clip(CLIP_100, range(17))]
    with torch.no_grad():
        z = [pipe.denormalize(pipe.encode(c[None], sample=False)) for c in clips]
    values = torch.cat([v.transpose(0, 1).flatten(1) for v in z], dim=1).double()
    stats = report["latent_stats"]
    np.testing.assert_allclose(stats["shift"], values.mean(1).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["scale"], values.std(1, unbiased=False).numpy(), rtol=1e-4)
    assert stats["count_per_channel"] == values.shape[1]


def test_reconstruct_outputs_from_shared_latents_equal_separate_passes(pipe):
    """Inference asks for all three outputs at once; each equals the pass that computes it alone."""
    x = torch.rand(1, 3, 19, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 17 + 2 frames
    out = pipe.reconstruct(x, rec=True, spatial=True, z=True)
    with torch.no_grad():
        assert torch.equal(out.rec, pipe.reconstruct(x).rec)
        assert torch.equal(out.spatial, pipe.reconstruct(x, rec=False, spatial=True).spatial)
        torch.testing.assert_close(out.rec, pipe.decode(pipe.encode(x, sample=False), 19), rtol=0, atol=1e-4)
        torch.testing.assert_close(out.spatial, pipe.spatial_vae.decode(pipe.spatial_vae.encode(x, sample=False)),
                                   rtol=0, atol=1e-4)
        torch.testing.assert_close(out.z, pipe.denormalize(pipe.encode(x, sample=False)), rtol=0, atol=1e-5)
    assert out.z.shape[2] == 5 + 1
    assert pipe.reconstruct(x, rec=False, z=True).rec is None
    with pytest.raises(ValueError, match="at least one"):
        pipe.reconstruct(x, rec=False)


def test_reconstruct_honours_pipeline_tiling(workspace):
    pipe = VideoVAEPipeline.from_pretrained(workspace / "run" / "step_000000010" / "model").eval()
    x = torch.rand(1, 3, 5, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    untiled = pipe.reconstruct(x).rec
    pipe.enable_tiling(temporal_tile=4, temporal_overlap=2, spatial=False)  # 8x8 latents in 4x4 tiles
    tiled = pipe.reconstruct(x, spatial=True).rec
    with torch.no_grad():
        torch.testing.assert_close(tiled, pipe.decode(pipe.encode(x, sample=False), 5), rtol=0, atol=1e-4)
    assert (tiled - untiled).abs().max() > 1e-4


def test_uint8_rounding_and_latent_stats_units():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, 10.3 / 127.5 - 1, 10.7 / 127.5 - 1]).view(1, 1, 1, 7)
    assert to_uint8_frames(x.expand(3, 1, 1, 7))[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 10, 11]
    stats = LatentStats(2)
    a, b = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64), torch.randn(1, 2, 1, 4, 4, dtype=torch.float64) + 5
    stats.update(a)
    other = LatentStats(2)
    other.update(b)
    stats.merge(other)
    both = torch.cat([a.transpose(0, 1).flatten(1), b.transpose(0, 1).flatten(1)], dim=1)
    torch.testing.assert_close(stats.mean, both.mean(1))
    torch.testing.assert_close(stats.std, both.std(1, unbiased=False))
    assert sample_name(7, 10) == "007" and sample_name(7, 12345) == "00007"


def test_dataset_frame_interval_starts_at_zero_and_skips_short(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text(f"path\n{CLIP_100}\n{CLIP_17}\n")
    ds = InferenceDataset(csv, num_frames=9, frame_interval=2, image_size=SIZE, transform_name="center", read_timeout_s=None)
    torch.testing.assert_close(ds[0]["video"], expected_clip(CLIP_100, range(0, 17, 2)), rtol=0, atol=0)
    assert ds[1]["video"].shape[1] == 9 and ds[1]["error"] is None  # 17 frames: 0..16 step 2 fit exactly
    short = InferenceDataset(csv, num_frames=9, frame_interval=3, image_size=SIZE, transform_name="center", read_timeout_s=None)[1]
    assert short["video"] is None and "too short" in short["error"]


def test_checkpoint_path_forms_and_errors(workspace, tmp_path):
    step = workspace / "run" / "step_000000010"
    assert resolve_pipeline_dir(step) == str(step / "model")
    assert resolve_pipeline_dir(step / "model") == str(step / "model")
    (workspace / "run" / "step_000000020" / "model").mkdir(parents=True, exist_ok=True)
    with pytest.raises(CheckpointError, match="step_000000020"):
        resolve_pipeline_dir(workspace / "run")
    # A missing or corrupt checkpoint fails before any data is read (this CSV does not exist).
    with pytest.raises(CheckpointError, match="does not exist"):
        run_inference(tiny_config(tmp_path / "nope", tmp_path / "no.csv", tmp_path / "o"), verbose=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((step / "model" / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        run_inference(tiny_config(bad, tmp_path / "no.csv", tmp_path / "o"), verbose=False)
    assert not (tmp_path / "o_ori").exists()


def test_all_bad_csv_and_stale_outputs_fail_clearly(workspace, tmp_path):
    ckpt = workspace / "run" / "step_000000010"
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path\nmissing1.mp4\nmissing2.png\n")
    with pytest.raises(InferenceError, match="none of the 2 samples.*missing1.mp4: file not found"):
        run_inference(tiny_config(ckpt, bad_csv, tmp_path / "a"), verbose=False)
    one = tmp_path / "one.csv"
    one.write_text(f"path\n{workspace / 'still.png'}\n")
    run_inference(tiny_config(ckpt, one, tmp_path / "b"), verbose=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run_inference(tiny_config(ckpt, one, tmp_path / "b"), verbose=False)
    (tmp_path / "b_rec" / "005.png").write_bytes(b"stale")
    report = run_inference(tiny_config(ckpt, one, tmp_path / "b", overwrite=True), verbose=False)
    assert sorted(p.name for p in (tmp_path / "b_rec").iterdir()) == ["000.png"] and report["num_samples"] == 1


def test_bf16_on_cpu_warns_and_uses_fp32(caplog, monkeypatch):
    monkeypatch.setattr("opensora_vae.precision._WARNED", set())
    with caplog.at_level("WARNING"):
        with autocast(torch.device("cpu"), "bf16"):
            assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    assert "bf16 is only used on CUDA" in caplog.text


def test_sampled_latents_are_seeded(workspace, tmp_path):
    ckpt = workspace / "run" / "step_000000010"
    one = tmp_path / "one.csv"
    one.write_text(f"path\n{workspace / 'still.png'}\n")
    recs = {}
    for name, options in (("a", {"sample": True}), ("b", {"sample": True}), ("mode", {}),
                          ("other_seed", {"sample": True, "seed": 7, "tiling": True})):
        run_inference(tiny_config(ckpt, one, tmp_path / name, **options), verbose=False)
        recs[name] = read_frames(tmp_path / f"{name}_rec" / "000.png")
    np.testing.assert_array_equal(recs["a"], recs["b"])
    assert not np.array_equal(recs["a"], recs["mode"]) and not np.array_equal(recs["a"], recs["other_seed"])


def _metric_inputs_bytes(num_frames: int, monkeypatch) -> tuple[int, dict, tuple]:
    """The largest float tensor `frame_metrics` hands to PSNR/SSIM (what the metric step holds
    besides the uint8 frames) on a (num_frames, 64, 64, 3) pair; its values; the pair."""
    from opensora_vae.inference import report

    largest = [0]

    def watched(metric):
        def call(a, b):
            largest[0] = max(largest[0], a.numel() * a.element_size() + b.numel() * b.element_size())
            return metric(a, b)
        return call

    monkeypatch.setattr(report, "psnr", watched(report.psnr))
    monkeypatch.setattr(report, "ssim", watched(report.ssim))
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (num_frames, SIZE, SIZE, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-9, 10, real.shape), 0, 255).astype(np.uint8)
    values = report.frame_metrics(real, fake)
    monkeypatch.undo()
    return largest[0], values, (real, fake)


def test_per_frame_metrics_stream_over_frames_flat_in_clip_length(monkeypatch):
    """Issue: the whole clip was held in float64 (+0.6 MB per 64x64 frame); frame by frame the
    memory of the metric step does not grow with the clip (benchmarks/bench_inference_memory.py
    measures the process), and the values are those of the whole-clip computation, bit for bit."""
    from opensora_vae.metrics import psnr, ssim

    short, _, _ = _metric_inputs_bytes(4, monkeypatch)
    long, values, (real, fake) = _metric_inputs_bytes(64, monkeypatch)
    assert long == short == 2 * SIZE * SIZE * 3 * 8  # one float64 frame of each side
    a, b = (torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float64) / 255.0 for x in (real, fake))
    assert values == {"psnr": psnr(a, b).tolist(), "ssim": ssim(a, b).tolist()}


def test_metrics_json_uses_the_eval_schema(run):
    """`<save_dir>_metrics.json` holds, for `_rec` vs `_ori`, the eval's keys with the eval's
    meaning (and the same for `_spatial` under "spatial"); the inference keys stay."""
    from opensora_vae.metrics.evaluate import evaluate_dirs
    from opensora_vae.metrics.settings import EvalSettings

    root, report = run
    saved = json.loads((root / "out" / "s_metrics.json").read_text())
    settings = EvalSettings(metrics=("ssim", "psnr"), num_frames=17, resolution=None, device="cpu")
    for kind in ("rec", "spatial"):
        block = saved if kind == "rec" else saved["spatial"]
        evaluated = evaluate_dirs(root / "out" / "s_ori", root / "out" / f"s_{kind}", settings, progress=False)
        assert set(evaluated) <= set(block), set(evaluated) - set(block)
        assert block["real_video_dir"] == evaluated["real_video_dir"]
        assert block["generated_video_dir"] == evaluated["generated_video_dir"]
        assert block["per_video"].keys() == evaluated["per_video"].keys() == {"000", "001", "003"}
        for metric in ("psnr", "ssim"):
            # The same quantity: the eval of the lossless files reproduces it up to float32 rounding.
            assert block[metric] == pytest.approx(evaluated[metric], rel=1e-5)
            assert block[metric] == saved["mean"][kind][metric]  # the old key, kept as an alias
            assert len(block[f"{metric}_ci95"]) == 2
        assert block["num_videos"] == 3 and block["num_frames_evaluated"] == 35
        assert block["protocol"]["name"] == "opensora"
    assert saved["num_skipped"] == 1 and saved["skipped"][0]["name"] == "002"
    assert saved["skipped"][0]["reason"] == report["skipped"][0]["reason"]
    assert saved["num_samples"] == 3 and len(saved["samples"]) == 3  # inference keys kept


def test_output_names_are_row_indices_or_source_stems_with_the_mapping_in_the_json(run, workspace, tmp_path):
    root, _ = run
    saved = json.loads((root / "out" / "s_metrics.json").read_text())
    assert saved["output_names"] == "index"
    assert saved["sources"] == {"000": str(CLIP_17), "001": str(workspace / "still.png"),
                                "002": str(workspace / "missing.mp4"), "003": str(CLIP_100)}
    ckpt = workspace / "run" / "step_000000010"
    csv = tmp_path / "d.csv"
    csv.write_text(f"path\n{CLIP_17}\n{workspace / 'still.png'}\n")
    report = run_inference(tiny_config(ckpt, csv, tmp_path / "s", output_names="stem"), verbose=False)
    assert sorted(p.name for p in (tmp_path / "s_rec").iterdir()) == [f"{CLIP_17.stem}.mp4", "still.png"]
    assert report["sources"] == {CLIP_17.stem: str(CLIP_17), "still": str(workspace / "still.png")}
    assert json.loads((tmp_path / "s_metrics.json").read_text())["sources"] == report["sources"]
    # Two rows with one stem would write one file twice: refused before any output.
    twice = tmp_path / "twice.csv"
    twice.write_text(f"path\n{CLIP_17}\n{CLIP_17}\n")
    with pytest.raises(InferenceError, match=CLIP_17.stem):
        run_inference(tiny_config(ckpt, twice, tmp_path / "t", output_names="stem"), verbose=False)
    assert not list(tmp_path.glob("t_*"))
    with pytest.raises(ConfigError, match="output_names"):
        tiny_config(ckpt, csv, tmp_path / "u", output_names="basename")


def test_whole_clip_model_reports_the_clip_as_one_chunk(workspace, tmp_path):
    """`model.micro_frame_size=None` encodes the whole clip at once: the report's chunk (the
    per-position seams) is `dataset.num_frames`, not the eval's default of 17."""
    one = tmp_path / "one.csv"
    one.write_text(f"path\n{CLIP_17}\n")
    run_inference(tiny_config(workspace / "run" / "step_000000010", one, tmp_path / "w",
                              **{"model.micro_frame_size": None, "dataset.num_frames": 9}), verbose=False)
    saved = json.loads((tmp_path / "w_metrics.json").read_text())
    for block in (saved, saved["spatial"]):
        assert block["protocol"]["chunk_frames"] == 9
