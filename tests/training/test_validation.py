"""Held-out validation in the loop (issue 20 part 1): the eval's numbers, raw and EMA weights,
the same values on 1 and 2 processes, the outputs users read, and the up-front refusals.

Run as a script, this file is the torchrun worker of the 2-process check (the real entry script).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (child_env, EVAL_ENTRY, INFER_ENTRY, REPO, TINY_INFER, TINY_TRAIN, TRAIN_ENTRY, moving_frames,
                           run_entry, tiny_train_cfg, write_test_video)

METRICS = ["ssim", "psnr", "lpips"]


def _val_table(folder: Path, broken: bool = True) -> Path:
    """Three 48x40 clips (20 frames, lossless; the reader crops and resizes them to the training
    32x32) and, with `broken`, an unreadable row."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(3):
        frames = moving_frames(48, 40, 20)[:, :, ::-1] if k == 1 else moving_frames(48, 40, 20)
        if k == 2:
            frames = frames[::-1]
        rows.append(str(write_test_video(folder / f"clip{k}.mp4", frames.copy(), lossless=True)))
    if broken:
        (folder / "broken.mp4").write_bytes(b"not a video")
        rows.insert(1, str(folder / "broken.mp4"))
    csv = folder / "val.csv"
    csv.write_text("path\n" + "\n".join(rows) + "\n")
    return csv


def _history(outputs: Path) -> list[dict]:
    return [json.loads(line) for line in (outputs / "val_history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny stage 1, 2 steps, EMA on, validated at step 2 (val_every=2) and at the end (step 3)."""
    from opensora_vae.training import train

    root = tmp_path_factory.mktemp("val")
    val_csv = _val_table(root / "val")
    train_csv = _val_table(root / "train", broken=False)
    outputs = root / "out"
    cfg = tiny_train_cfg(1, outputs, train_csv, max_steps=3, ckpt_every=2, ema_decay=0.9, val_every=2,
                         val_data_path=str(val_csv), val_metrics=METRICS, val_best_metric="lpips")
    train(cfg)
    return root, val_csv, outputs


def _infer_then_eval(root: Path, ckpt: Path, val_csv: Path, name: str) -> dict:
    """What a user runs on checkpoint `ckpt`: inference (lossless files) on the validation table,
    then the eval CLI on the two folders with the validation's settings (the files hold the
    selected frames already: stride 1)."""
    import torch

    from opensora_vae.training.validation import val_eval_settings

    save = root / name
    assert run_entry(INFER_ENTRY, [TINY_INFER, "--ckpt-path", ckpt, "--data-path", val_csv, "--save-dir", save,
                                   "--cfg-options", "lossless=True", "dataset.image_size=[32,32]"]) == 0
    s = val_eval_settings(tiny_train_cfg(1, root / "unused", val_csv, val_metrics=METRICS), torch.device("cpu"))
    assert (s.num_frames, s.sample_rate, s.resolution, s.crop_size) == (17, 1, 32, 32)
    res = root / f"{name}_eval"
    assert run_entry(EVAL_ENTRY, ["--real_video_dir", f"{save}_ori", "--generated_video_dir", f"{save}_rec",
                                  "--num_frames", s.num_frames, "--sample_rate", 1, "--resolution", s.resolution,
                                  "--crop_size", s.crop_size, "--metric", *METRICS, "--device", "cpu",
                                  "--res_dir", res, "--skip_bad", "--no_progress"]) == 0
    return json.loads(next(res.glob("metric_*.json")).read_text())


@pytest.mark.parametrize("weights, subdir", [("raw", "model"), ("ema", "ema")])
def test_validation_equals_inference_then_eval_of_the_checkpoint(trained, weights, subdir):
    root, val_csv, outputs = trained
    line = next(h for h in _history(outputs) if h["step"] == 2 and h["weights"] == weights)
    result = _infer_then_eval(root, outputs / "step_000000002" / subdir, val_csv, f"infer_{weights}")
    assert result["num_videos"] == line["num_clips"] == 3
    assert line["num_frames"] == 3 * 17
    for metric in METRICS:
        assert line[metric] == pytest.approx(result[metric], abs=1e-6, rel=0), metric


def test_history_best_record_and_tensorboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from opensora_vae.training.checkpoint import read_training_state

    _, val_csv, outputs = trained
    history = _history(outputs)
    # step 2 (val_every) and step 3 (the end), raw and EMA weights each.
    assert [(h["step"], h["weights"]) for h in history] == [(2, "raw"), (2, "ema"), (3, "raw"), (3, "ema")]
    for line in history:
        assert set(METRICS) <= set(line) and line["seconds"] > 0
        assert line["skipped"] == 1 and line["skipped_clips"][0]["index"] == 1
        assert line["skipped_clips"][0]["path"].endswith("broken.mp4") and line["skipped_clips"][0]["reason"]
    best = json.loads((outputs / "val_best.json").read_text())
    winner = min(history, key=lambda h: h["lpips"])
    assert (best["metric"], best["value"], best["step"], best["weights"]) == (
        "lpips", winner["lpips"], winner["step"], winner["weights"])
    assert best["checkpoint"] == str(outputs / f"step_{winner['step']:09d}")
    assert Path(best["weights_dir"]).is_dir()
    # The record is state: the checkpoint of step 3 holds it.
    state = read_training_state(outputs / "step_000000003")
    assert state["validation"]["best"] == best and state["validation"]["last_step"] == 3
    acc = EventAccumulator(str(outputs / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = acc.Tags()["scalars"]
    for prefix in ("val", "val_ema"):
        for metric in METRICS + ["skipped", "seconds"]:
            assert f"{prefix}/{metric}" in scalars
        assert [e.value for e in acc.Scalars(f"{prefix}/lpips")] == pytest.approx(
            [h["lpips"] for h in history if h["weights"] == ("raw" if prefix == "val" else "ema")])
    # The first two readable clips (rows 0 and 2), the same ones at every validation.
    images = acc.Tags()["images"]
    assert {"val/preview_0", "val/preview_1", "val_ema/preview_0", "val_ema/preview_1"} <= set(images)
    assert "val/preview_2" not in images
    assert [e.step for e in acc.Images("val/preview_1")] == [2, 3]


def _validate_checkpoint_in_one_process(cfg, step_dir: Path, step: int) -> list[dict]:
    """The Validator of this process (no process group) on a checkpoint's raw and EMA weights."""
    import torch

    from opensora_vae.distributed import DistEnv
    from opensora_vae.training.checkpoint import read_weights
    from opensora_vae.training.validation import Validator

    validator = Validator(cfg, DistEnv(0, 1, 0, torch.device("cpu")))
    config = json.loads((step_dir / "model" / "config.json").read_text())
    # The ranks ran with one thread each (OMP_NUM_THREADS=1): CPU convolutions sum in another order
    # with more threads, so "bit for bit" compares runs of the same thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return validator.run(step, read_weights(step_dir / "model"), read_weights(step_dir / "ema"), config)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_give_the_values_of_one(tmp_path, parallel):
    """2 gloo ranks split the clips (unevenly: 3 readable + 1 broken) and merge their values; one
    process validating the same checkpoint gets the same numbers, bit for bit."""
    val_csv = _val_table(tmp_path / "val")
    train_csv = _val_table(tmp_path / "train", broken=False)
    outputs = tmp_path / "out"
    options = ["dataset.image_size=[32,32]", "max_steps=2", "ckpt_every=2", "ema_decay=0.9", "val_every=2",
               f"val_data_path={val_csv}", f"parallel={parallel}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TRAIN_ENTRY),
           str(TINY_TRAIN[1]), "--data-path", str(train_csv), "--outputs", str(outputs), "--cfg-options", *options]
    env = child_env()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    two = _history(outputs)
    assert [(h["step"], h["weights"]) for h in two] == [(2, "raw"), (2, "ema")]
    cfg = tiny_train_cfg(1, tmp_path / "one", train_csv, max_steps=2, ema_decay=0.9, val_data_path=str(val_csv))
    one = _validate_checkpoint_in_one_process(cfg, outputs / "step_000000002", 2)
    for a, b in zip(one, two):
        assert (a["num_clips"], a["skipped"], a["num_frames"]) == (b["num_clips"], b["skipped"], b["num_frames"]) == (
            3, 1, 51)
        assert {m: a[m] for m in ("ssim", "psnr", "lpips")} == {m: b[m] for m in ("ssim", "psnr", "lpips")}


def test_missing_or_empty_val_table_is_one_line_error_before_training(tmp_path, capsys):
    train_csv = _val_table(tmp_path / "train", broken=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("path\n")
    for table in (tmp_path / "missing.csv", empty):
        outputs = tmp_path / f"out_{table.stem}"
        code = run_entry(TRAIN_ENTRY, [TINY_TRAIN[1], "--data-path", train_csv, "--outputs", outputs,
                                       "--cfg-options", f"val_data_path={table}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:") and str(table) in err[0]
        assert not outputs.exists()  # nothing was written: training never started


@pytest.mark.parametrize("options, bad_key", [
    ({"val_metrics": ["ssim"], "val_best_metric": "lpips"}, "val_best_metric"),
    ({"val_metrics": ["ssim", "fvd"], "val_best_metric": "ssim", "val_max_clips": 8}, "val_metrics"),
    ({"val_metrics": ["ssim", "mse"], "val_best_metric": "ssim"}, "val_metrics"),
    ({"val_every": 0}, "val_every"),
    ({"val_max_clips": 0}, "val_max_clips"),
])
def test_invalid_validation_settings_are_refused(tmp_path, options, bad_key):
    from opensora_vae.config import ConfigError

    with pytest.raises(ConfigError, match=bad_key):
        tiny_train_cfg(1, tmp_path / "out", tmp_path / "t.csv", **options)


def test_fvd_needs_enough_clips_in_the_table(tmp_path):
    import torch

    from opensora_vae.distributed import DistEnv
    from opensora_vae.training.validation import ValidationError, Validator

    val_csv = _val_table(tmp_path / "val")
    cfg = tiny_train_cfg(1, tmp_path / "out", val_csv, val_data_path=str(val_csv), val_max_clips=None,
                         val_metrics=["ssim", "fvd"], val_best_metric="ssim")
    with pytest.raises(ValidationError, match="fvd"):
        Validator(cfg, DistEnv(0, 1, 0, torch.device("cpu")))


def test_resume_keeps_the_record_and_drops_history_after_the_checkpoint(trained, tmp_path):
    """Resuming from step 2 (an interrupted run had validated step 3 too): step 3's lines go, the
    best record is the checkpoint's, and the resumed run validates steps 3 and 4 once each."""
    import shutil

    from opensora_vae.training import train
    from opensora_vae.training.checkpoint import read_training_state

    root, val_csv, outputs = trained
    copy = tmp_path / "out"
    shutil.copytree(outputs, copy)
    shutil.rmtree(copy / "step_000000003")
    saved = read_training_state(copy / "step_000000002")["validation"]
    assert saved["last_step"] == 2 and saved["best"]["step"] == 2
    cfg = tiny_train_cfg(1, copy, root / "train" / "val.csv", max_steps=4, ckpt_every=2, ema_decay=0.9,
                         val_every=2, val_data_path=str(val_csv), val_metrics=METRICS, val_best_metric="lpips",
                         load="auto")
    train(cfg)
    history = _history(copy)
    assert [(h["step"], h["weights"]) for h in history] == [(2, "raw"), (2, "ema"), (4, "raw"), (4, "ema")]
    assert history[:2] == _history(outputs)[:2]
    best = json.loads((copy / "val_best.json").read_text())
    winner = min(history, key=lambda h: h["lpips"])
    assert (best["step"], best["weights"], best["value"]) == (winner["step"], winner["weights"], winner["lpips"])


def test_pruning_keeps_the_best_checkpoint(tmp_path):
    """keep_last_ckpts=1 removes old step dirs, but never the one val_best.json names."""
    from opensora_vae.training import train

    val_csv = _val_table(tmp_path / "val", broken=False)
    train_csv = _val_table(tmp_path / "train", broken=False)
    outputs = tmp_path / "out"
    # A learning rate far too high: the weights get worse, so an early step is the best.
    train(tiny_train_cfg(1, outputs, train_csv, max_steps=3, ckpt_every=1, keep_last_ckpts=1, val_every=1,
                         lr=0.5, val_data_path=str(val_csv), val_metrics=["psnr"], val_best_metric="psnr"))
    best = json.loads((outputs / "val_best.json").read_text())
    kept = sorted(p.name for p in outputs.glob("step_*"))
    assert kept == sorted({"step_000000003", Path(best["checkpoint"]).name})
    assert Path(best["weights_dir"]).is_dir()
