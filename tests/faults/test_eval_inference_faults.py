"""Bad input to `scripts/inference_vae.py` and `eval/vae/eval_common_metric.py`: unusable rows
are counted skips, bad checkpoints and mismatched folders are clear errors, and no number is
computed from a pair that does not match."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from opensora_vae.data import read_video_frames, write_image, write_video
from opensora_vae.metrics import psnr
from opensora_vae.metrics.protocol import preprocess

from tests.helpers import CLIP_17, EVAL_ENTRY, INFER_ENTRY, TINY_INFER, run, run_and_kill_when, write_csv

# ----------------------------------------------------------------------------- inference


def test_inference_skips_and_reports_unusable_rows_with_workers(bad_media, broken_checkpoints, tmp_path):
    rows = bad_media.rows()
    csv = write_csv(tmp_path / "mixed.csv", rows)
    save = tmp_path / "out" / "s"
    result = run([sys.executable, INFER_ENTRY, TINY_INFER, "--ckpt-path", broken_checkpoints["good"],
                  "--data-path", csv, "--save-dir", save, "--cfg-options", "num_workers=2", "lossless=True"])
    assert result.code == 0, result.out
    report = json.loads(save.with_name("s_metrics.json").read_text())
    names = {Path(p).name: i for i, p in enumerate(rows)}
    assert report["num_rows"] == len(rows) and report["num_samples"] == len(bad_media.usable)
    skipped = {Path(s["path"]).name: s for s in report["skipped"]}
    assert skipped.keys() == bad_media.unusable.keys()
    for name, (_, reason) in bad_media.unusable.items():
        assert reason.replace("(5 < 17)", "(5 frames < 17 needed") in skipped[name]["reason"], (name, skipped[name])
        assert skipped[name]["index"] == names[name]  # the row number of the table
    # Every usable row is written under its row number: images and the 1-frame video as PNG.
    stills = {"gray.png", "rgba.png", "cmyk.jpg", "gray16.png", "one_frame.mp4"}
    want = sorted(f"{names[n]:03d}.{'png' if n in stills else 'mp4'}" for n in bad_media.usable)
    for kind in ("ori", "rec", "spatial"):
        assert sorted(p.name for p in (tmp_path / "out" / f"s_{kind}").iterdir()) == want
    assert all(np.isfinite(s["rec"]["psnr"]) for s in report["samples"])


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("truncated", "cannot read weights"),
    ("garbage_config", "cannot parse"),
    ("config_not_an_object", "is not a JSON object"),
    ("config_wrong_type", "does not describe a pipeline this code can build"),
    ("config_other_arch", "does not fit this model architecture"),
])
def test_inference_bad_checkpoint_is_a_clear_error_before_any_output(broken_checkpoints, tmp_path, monkeypatch,
                                                                     capsys, case, message):
    csv = write_csv(tmp_path / "one.csv", [CLIP_17])
    save = tmp_path / "s"
    monkeypatch.setattr(sys, "argv", ["inference_vae.py", str(TINY_INFER), "--ckpt-path",
                                      str(broken_checkpoints[case]), "--data-path", str(csv), "--save-dir", str(save)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(INFER_ENTRY), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: " in err and message in err, err
    assert str(broken_checkpoints[case]) in err and "Traceback" not in err
    assert not list(tmp_path.glob("s_*"))


@pytest.mark.timeout(400)
def test_an_interrupted_overwrite_run_is_visibly_incomplete_and_the_eval_refuses_it(broken_checkpoints, tmp_path):
    """A complete run, then an `overwrite=True` run at another size SIGKILLed after its first sample:
    the earlier report must not describe the mix, and the eval must refuse the folders (counting
    samples); a rerun completes the set again."""
    from opensora_vae.metrics.protocol import EvalError, pair_files

    csv = write_csv(tmp_path / "d.csv", [CLIP_17, tmp_path / "missing.mp4", CLIP_17, CLIP_17])
    save = tmp_path / "s"
    report_path, ori, rec = (tmp_path / f"s_{k}" for k in ("metrics.json", "ori", "rec"))
    cmd = [sys.executable, INFER_ENTRY, TINY_INFER, "--ckpt-path", broken_checkpoints["good"], "--data-path", csv,
           "--save-dir", save, "--cfg-options", "num_workers=0", "lossless=True"]
    first = run(cmd)
    assert first.code == 0, first.out
    assert json.loads(report_path.read_text())["num_samples"] == 3 and len(pair_files(ori, rec)) == 3

    killed, fired = run_and_kill_when([*cmd, "overwrite=True", "dataset.image_size=[32,32]"],
                                      lambda line: "skipping sample 1 " in line)
    assert fired and killed.code != 0, killed.out
    written = sorted(p.name for p in rec.iterdir() if not p.name.startswith("."))
    assert written and read_video_frames(rec / "000.mp4", [0]).shape[1:3] == (32, 32)  # new files are there
    assert not report_path.exists()  # no report describes the earlier run any more
    with pytest.raises(EvalError) as err:
        pair_files(ori, rec)
    assert f"{len(written)} of 4 samples" in str(err.value)  # samples, not files of the 3 output dirs
    evaluated = run([sys.executable, EVAL_ENTRY, "--real_video_dir", ori, "--generated_video_dir", rec,
                     "--metric", "psnr", "--device", "cpu", "--res_dir", tmp_path / "res"], timeout=120)
    assert evaluated.code == 2 and not (tmp_path / "res").exists(), evaluated.out

    again = run([*cmd, "overwrite=True", "dataset.image_size=[32,32]"])
    assert again.code == 0, again.out
    assert json.loads(report_path.read_text())["num_samples"] == 3 and len(pair_files(ori, rec)) == 3
    assert not [p for d in (ori, rec, tmp_path / "s_spatial") for p in d.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- eval


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return read_video_frames(CLIP_17, range(17))[:, 64:128, 64:128]  # 17 frames, 64x64


def _noisy(frames: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-10, 11, frames.shape)
    return np.clip(frames.astype(int) + noise, 0, 255).astype(np.uint8)


def _folders(root: Path, frames: np.ndarray, names=("a", "b")) -> tuple[Path, Path]:
    real, gen = root / "real", root / "gen"
    real.mkdir(parents=True), gen.mkdir(parents=True)
    for i, name in enumerate(names):
        write_video(real / f"{name}.mp4", frames, 24, lossless=True)
        write_video(gen / f"{name}.mp4", _noisy(frames, i), 24, lossless=True)
    return real, gen


def _eval(real: Path, gen: Path, monkeypatch, *extra: str):
    """eval_common_metric.py as `python eval/...` runs it: returns (exit code or None, JSON)."""
    res_dir = real.parent / "res"
    monkeypatch.setattr(sys, "argv", ["eval_common_metric.py", "--real_video_dir", str(real),
                                      "--generated_video_dir", str(gen), "--num_frames", "17", "--resolution", "64",
                                      "--metric", "psnr", "--device", "cpu", "--no_progress",
                                      "--res_dir", str(res_dir), *extra])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EVAL_ENTRY), run_name="__main__")
    if exit_info.value.code != 0:
        return exit_info.value.code, None
    return 0, json.loads((res_dir / "metric_17f_64res.json").read_text())


def _edit(case: str, real: Path, gen: Path, frames: np.ndarray) -> None:
    if case == "mismatched names":
        (gen / "b.mp4").rename(gen / "b_rec.mp4")
    elif case == "fewer generated frames":
        write_video(gen / "b.mp4", frames[:10], 24, lossless=True)
    elif case == "fewer real frames":
        write_video(real / "b.mp4", frames[:16], 24, lossless=True)
    elif case == "different sizes":
        write_video(gen / "b.mp4", np.ascontiguousarray(frames[:, :48]), 24, lossless=True)
    elif case == "zero-byte real":
        (real / "b.mp4").write_bytes(b"")
    elif case == "text as generated video":
        (gen / "b.mp4").write_text("not a video\n" * 50)
    elif case == "truncated generated":
        data = (gen / "b.mp4").read_bytes()
        (gen / "b.mp4").write_bytes(data[: len(data) // 2])
    elif case == "empty generated folder":
        for p in gen.iterdir():
            p.unlink()
    elif case == "missing real folder":
        for p in real.iterdir():
            p.unlink()
        real.rmdir()


@pytest.mark.parametrize("case,message", [
    ("mismatched names", "do not hold the same names"),
    ("fewer generated frames", "b: frame counts differ within the 17 frames requested"),
    ("fewer real frames", "b: frame counts differ within the 17 frames requested"),
    ("different sizes", "b: frame sizes differ"),
    ("zero-byte real", "b.mp4: file is empty"),
    ("text as generated video", "b.mp4: cannot open video"),
    ("truncated generated", "b.mp4: cannot open video"),
    ("empty generated folder", "no video or image files in"),
    ("missing real folder", "not a folder"),
])
def test_eval_mismatches_and_corrupt_files_are_clear_errors(tmp_path, frames, monkeypatch, capsys, case, message):
    real, gen = _folders(tmp_path, frames)
    _edit(case, real, gen, frames)
    code, result = _eval(real, gen, monkeypatch)
    err = capsys.readouterr().err
    assert result is None and code == 2, "a number was produced"
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "res").exists()


def test_eval_skip_bad_counts_the_corrupt_pair_and_scores_only_the_good_one(tmp_path, frames, monkeypatch):
    real, gen = _folders(tmp_path, frames)
    (gen / "b.mp4").write_text("not a video\n" * 50)
    code, result = _eval(real, gen, monkeypatch, "--skip_bad")
    assert code == 0
    assert result["num_videos"] == 1 and result["num_skipped"] == 1 and list(result["per_video"]) == ["a"]
    assert result["skipped"][0]["name"] == "b" and "cannot open video" in result["skipped"][0]["reason"]
    cpu = torch.device("cpu")
    direct = psnr(preprocess(frames, 64, None, cpu), preprocess(_noisy(frames, 0), 64, None, cpu))
    assert result["psnr"] == pytest.approx(direct.double().mean().item(), rel=1e-9)


def test_eval_entry_exit_status_and_message(tmp_path, frames):
    real, gen = _folders(tmp_path, frames, names=("a",))
    write_image(gen / "a.png", frames[0])  # a.mp4 and a.png: two files for one name
    result = run([sys.executable, EVAL_ENTRY, "--real_video_dir", real, "--generated_video_dir", gen,
                  "--metric", "psnr", "--device", "cpu", "--no_progress"], timeout=120)
    assert result.code == 2 and "error: " in result.out and "have the same name" in result.out, result.out
    assert "Traceback" not in result.out
