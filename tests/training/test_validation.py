"""Held-out validation in the loop (issue 20 part 1): the eval's numbers, raw and EMA weights,
the same values on 1 and 2 processes, the outputs users read, and the up-front refusals.

Run as a script, this file is the torchrun worker of the 2-process check (the real entry script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (EVAL_ENTRY, INFER_ENTRY, REPO, TINY_INFER, TINY_TRAIN, TRAIN_ENTRY, moving_frames,
                           run_entry, tiny_train_cfg, write_test_video)

METRICS = ["ssim", "psnr", "lpips"]


def _val_table(folder: Path, broken: bool = True) -> Path:
    """Three 32x32 clips (20 frames, lossless) and, with `broken`, an unreadable row."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(3):
        frames = moving_frames(32, 32, 20)[:, :, ::-1] if k == 1 else moving_frames(32, 32, 20)
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
    from opensora_vae.training.validation import ValWindow

    save = root / name
    assert run_entry(INFER_ENTRY, [TINY_INFER, "--ckpt-path", ckpt, "--data-path", val_csv, "--save-dir", save,
                                   "--cfg-options", "lossless=True", "dataset.image_size=[32,32]"]) == 0
    window = ValWindow(num_frames=17, sample_rate=1, resolution=32, crop_size=32)
    res = root / f"{name}_eval"
    assert run_entry(EVAL_ENTRY, ["--real_video_dir", f"{save}_ori", "--generated_video_dir", f"{save}_rec",
                                  *window.eval_flags(), "--metric", *METRICS, "--device", "cpu",
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
