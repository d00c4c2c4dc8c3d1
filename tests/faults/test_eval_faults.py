"""Eval faults (`eval/vae/eval_common_metric.py`): a bad setting or output location is an error
(exit 2) before any video is decoded, a results file of another comparison is never overwritten
silently, and a generated video at another frame rate is flagged in the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from opensora_vae.data.video_io import VideoFile, read_video_frames, write_video
from tests.helpers import CLIP_17, EVAL_ENTRY, run, run_entry

NUM_FRAMES = 5
RESULTS = f"metric_{NUM_FRAMES}f_32res.json"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return read_video_frames(CLIP_17, range(NUM_FRAMES))[:, 64:128, 64:128]  # 64x64


def _noisy(frames: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-10, 11, frames.shape)
    return np.clip(frames.astype(int) + noise, 0, 255).astype(np.uint8)


def _folders(root: Path, frames: np.ndarray, gen_name: str = "gen", gen_fps: float = 24,
             seed: int = 0) -> tuple[Path, Path]:
    real, gen = root / "real", root / gen_name
    real.mkdir(parents=True, exist_ok=True), gen.mkdir(parents=True)
    for i, name in enumerate(("a", "b")):
        if not (real / f"{name}.mp4").exists():
            write_video(real / f"{name}.mp4", frames, 24, lossless=True)
        write_video(gen / f"{name}.mp4", _noisy(frames, seed + i), gen_fps, lossless=True)
    return real, gen


def _argv(real: Path, gen: Path, *extra) -> list:
    return ["--real_video_dir", real, "--generated_video_dir", gen, "--num_frames", NUM_FRAMES,
            "--resolution", 32, "--metric", "psnr", "--device", "cpu", "--no_progress", *extra]


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Every `VideoFile.read` call of the eval (the work a late error would waste)."""
    calls = []
    original = VideoFile.read

    def counting_read(self, indices, *args, **kwargs):
        calls.append(self.path)
        return original(self, indices, *args, **kwargs)

    monkeypatch.setattr(VideoFile, "read", counting_read)
    return calls


@pytest.mark.parametrize("flag,value", [
    ("--subset_size", -1), ("--subset_size", 0), ("--resolution", 0), ("--resolution", -8),
    ("--num_frames", 0), ("--sample_rate", 0), ("--sample_rate", -2), ("--batch_size", 0),
    ("--crop_size", 0), ("--device", "foo"), ("--device", "cuda:x"),
    # Issue 19 item 9: crops the VAE's 8x grid cannot take, or smaller than SSIM's 11x11 window,
    # and a crop larger than the resized short side, are refused before any decode.
    ("--crop_size", 28), ("--crop_size", 8), ("--crop_size", 40),
    ("--protocol", "styleganv"),  # fixes 16 frames; these flags ask for 5
    ("--protocol", "nope"), ("--bootstrap", -1), ("--worst_k", -1),
])
def test_bad_setting_is_an_error_before_any_decode(tmp_path, frames, decodes, flag, value):
    real, gen = _folders(tmp_path, frames)
    res = tmp_path / "res"
    assert run_entry(EVAL_ENTRY, _argv(real, gen, flag, value, "--res_dir", res)) == 2
    assert decodes == [] and not res.exists()


def test_bad_device_is_one_line_without_traceback(tmp_path, frames):
    real, gen = _folders(tmp_path, frames)
    result = run([sys.executable, EVAL_ENTRY, *_argv(real, gen, "--device", "foo")], timeout=120)
    lines = [line for line in result.out.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.out


def test_subset_size_takes_the_first_pairs(tmp_path, frames):
    real, gen = _folders(tmp_path, frames)
    res = tmp_path / "res"
    assert run_entry(EVAL_ENTRY, _argv(real, gen, "--subset_size", 1, "--res_dir", res)) == 0
    assert list(json.loads((res / RESULTS).read_text())["per_video"]) == ["a"]


@pytest.mark.parametrize("case", ["res_dir is a file", "res_dir under a file", "results path is a folder"])
def test_unusable_res_dir_is_an_error_before_any_decode(tmp_path, frames, decodes, case):
    real, gen = _folders(tmp_path, frames)
    blocker = tmp_path / "blocker"
    if case == "res_dir is a file":
        blocker.write_text("x")
        res = blocker
    elif case == "res_dir under a file":
        blocker.write_text("x")
        res = blocker / "res"
    else:
        res = tmp_path / "res"
        (res / RESULTS).mkdir(parents=True)
    assert run_entry(EVAL_ENTRY, _argv(real, gen, "--res_dir", res)) == 2
    assert decodes == []


def test_results_name_the_compared_folders_and_other_comparisons_are_not_overwritten(tmp_path, frames, decodes):
    real, rec = _folders(tmp_path, frames, gen_name="s_rec", seed=0)
    _, spatial = _folders(tmp_path, frames, gen_name="s_spatial", seed=7)
    res = tmp_path / "res"
    assert run_entry(EVAL_ENTRY, _argv(real, rec, "--res_dir", res)) == 0
    first = json.loads((res / RESULTS).read_text())
    assert first["real_video_dir"] == str(real.resolve()) and first["generated_video_dir"] == str(rec.resolve())
    # The same comparison again: the file is replaced (a rerun after a fix is the common case).
    assert run_entry(EVAL_ENTRY, _argv(real, rec, "--res_dir", res)) == 0
    # Another generated folder into the same --res_dir: refused before any decode, file kept.
    decodes.clear()
    assert run_entry(EVAL_ENTRY, _argv(real, spatial, "--res_dir", res)) == 2
    assert decodes == [] and json.loads((res / RESULTS).read_text()) == first
    # ... unless asked for.
    assert run_entry(EVAL_ENTRY, _argv(real, spatial, "--res_dir", res, "--overwrite")) == 0
    second = json.loads((res / RESULTS).read_text())
    assert second["generated_video_dir"] == str(spatial.resolve()) and second["psnr"] != first["psnr"]


def test_results_file_of_unknown_origin_is_not_overwritten(tmp_path, frames):
    real, gen = _folders(tmp_path, frames)
    res = tmp_path / "res"
    res.mkdir()
    (res / RESULTS).write_text('{"psnr": 30.0}')  # e.g. the reference script's output
    assert run_entry(EVAL_ENTRY, _argv(real, gen, "--res_dir", res)) == 2
    assert (res / RESULTS).read_text() == '{"psnr": 30.0}'


def test_generated_video_at_another_fps_is_flagged(tmp_path, frames):
    real, gen = _folders(tmp_path, frames, gen_fps=12)  # e.g. temporally subsampled
    res = tmp_path / "res"
    assert run_entry(EVAL_ENTRY, _argv(real, gen, "--res_dir", res)) == 0
    result = json.loads((res / RESULTS).read_text())
    assert [v["fps_mismatch"] for v in result["per_video"].values()] == [True, True]
    assert result["per_video"]["a"]["fps"] == {"real": 24.0, "generated": 12.0}
    assert result["num_fps_mismatch"] == 2 and any("fps" in w for w in result["warnings"])
    same, same_gen = _folders(tmp_path / "same", frames)
    assert run_entry(EVAL_ENTRY, _argv(same, same_gen, "--res_dir", tmp_path / "res2")) == 0
    result = json.loads((tmp_path / "res2" / RESULTS).read_text())
    assert result["num_fps_mismatch"] == 0 and not result["per_video"]["a"]["fps_mismatch"]


def test_fvd_with_images_names_and_counts_them_up_front(tmp_path, decodes):
    """Issue 23 item 2: images (and videos too short for FVD) never enter FVD: they are named and
    counted, the other metrics still score them; with fewer than 2 videos left for FVD the run is
    refused before any decode, never halfway."""
    from opensora_vae.data.video_io import write_image

    clip = read_video_frames(CLIP_17, range(17))[:, 64:96, 64:96]
    real, gen = tmp_path / "real", tmp_path / "gen"
    real.mkdir(), gen.mkdir()
    write_image(real / "still.png", clip[0])
    write_image(gen / "still.png", _noisy(clip[:1], 9)[0])
    write_video(real / "short.mp4", clip[:6], 24, lossless=True)
    write_video(gen / "short.mp4", _noisy(clip[:6], 8), 24, lossless=True)
    write_video(real / "v1.mp4", clip, 24, lossless=True)
    write_video(gen / "v1.mp4", _noisy(clip, 1), 24, lossless=True)
    base = ["--real_video_dir", real, "--generated_video_dir", gen, "--num_frames", 16, "--resolution", 32,
            "--device", "cpu", "--no_progress", "--bootstrap", 0, "--metric", "psnr", "fvd"]
    # One video can enter FVD: refused before any decode, and no results file.
    decodes.clear()  # the clip read above
    assert run_entry(EVAL_ENTRY, [*base, "--res_dir", tmp_path / "res1"]) == 2
    assert decodes == [] and not (tmp_path / "res1").exists()
    write_video(real / "v2.mp4", clip[::-1].copy(), 24, lossless=True)
    write_video(gen / "v2.mp4", _noisy(clip[::-1].copy(), 2), 24, lossless=True)
    assert run_entry(EVAL_ENTRY, [*base, "--res_dir", tmp_path / "res"]) == 0
    saved = json.loads((tmp_path / "res" / "metric_16f_32res.json").read_text())
    assert saved["num_videos"] == 4 and set(saved["per_video"]) == {"still", "short", "v1", "v2"}
    assert saved["fvd_num_videos"] == 2 and saved["fvd_num_excluded"] == 2 and saved["fvd"] >= 0
    assert {e["name"] for e in saved["fvd_excluded"]} == {"still", "short"}
    assert saved["per_video"]["still"]["fvd_excluded"] and saved["per_video"]["v1"]["fvd_excluded"] is None
    assert saved["per_video"]["still"]["psnr"] is not None  # the other metrics still use it
