"""`torchrun --nproc_per_node=2 eval/vae/eval_common_metric.py` (gloo, CPU): the pairs are split
over the ranks in whole batches and merged exactly: the JSON equals one process's (FVD within
1e-6 relative, everything else bit for bit), and a skipped file is reported once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from opensora_vae.data.video_io import read_video_frames, write_video
from opensora_vae.metrics.fvd import i3d_weights_path
from tests.helpers import CLIP_17, EVAL_ENTRY, REPO, write_eval_pairs

FVD = i3d_weights_path().is_file()


def _run(launcher: list, folders, res_dir) -> subprocess.CompletedProcess:
    real, gen = folders
    metrics = ["ssim", "psnr", "lpips"] + (["fvd"] if FVD else [])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*launcher, str(EVAL_ENTRY), "--real_video_dir", str(real), "--generated_video_dir", str(gen),
           "--num_frames", "16", "--resolution", "32", "--device", "cpu", "--batch_size", "2", "--skip_bad",
           "--bootstrap", "200", "--metric", *metrics, "--res_dir", str(res_dir), "--no_progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO.parent)


def test_two_processes_give_the_json_of_one(tmp_path):
    clip = read_video_frames(CLIP_17, range(16))[:, 40:88, 60:108]  # 48x48
    clips = {f"v{i}": np.ascontiguousarray(np.roll(clip, 9 * i, axis=1)) for i in range(5)}
    write_eval_pairs(tmp_path, clips, {f"v{i}": 6 * (i + 1) for i in range(5)})
    real, gen = tmp_path / "real", tmp_path / "gen"
    write_video(real / "v5.mp4", clip, 24, lossless=True)
    (gen / "v5.mp4").write_bytes(b"\0not a video" * 64)  # skipped (and reported) once

    one = _run([sys.executable], (real, gen), tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
               (real, gen), tmp_path / "two")
    assert two.returncode == 0, two.stderr
    a, b = (json.loads(next((tmp_path / n).glob("metric_*.json")).read_text()) for n in ("one", "two"))
    assert a["skipped"] == b["skipped"] and [s["name"] for s in b["skipped"]] == ["v5"]
    assert two.stderr.count("skipped v5") == 1 and two.stdout.count("pair(s) evaluated") == 1
    if FVD:
        assert b.pop("fvd") == pytest.approx(a.pop("fvd"), rel=1e-6)
        assert b.pop("fvd_ci95") == pytest.approx(a.pop("fvd_ci95"), rel=1e-6)
    assert a == b  # means, intervals, per-frame values, per-video records: bit for bit
    assert a["num_videos"] == 5 and a["ssim_ci95"][0] <= a["ssim"] <= a["ssim_ci95"][1]


def test_a_bad_file_read_by_rank_1_stops_every_rank_with_one_message(tmp_path):
    clip = read_video_frames(CLIP_17, range(4))[:, 40:88, 60:108]
    write_eval_pairs(tmp_path, {f"v{i}": clip for i in range(3)})
    (tmp_path / "gen" / "v2.mp4").write_bytes(b"\0not a video" * 64)  # pair 2: batch 1, rank 1's
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EVAL_ENTRY),
           "--real_video_dir", str(tmp_path / "real"), "--generated_video_dir", str(tmp_path / "gen"),
           "--num_frames", "4", "--resolution", "32", "--device", "cpu", "--metric", "psnr", "--no_progress",
           "--res_dir", str(tmp_path / "res")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "v2.mp4" in errors[0], proc.stderr
    assert not (tmp_path / "res").exists()
