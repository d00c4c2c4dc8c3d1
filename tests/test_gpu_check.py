"""benchmarks/gpu_check.sh on its CPU path: the real entry scripts (torchrun training, resume,
inference, eval) on the tiny configs, one JSON with every part."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, child_env


@pytest.mark.slow  # five real processes (two torchrun trainings, inference, eval, one throughput run)
def test_gpu_check_cpu_path_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    # One throughput run keeps the suite fast; the others are recorded as skipped.
    cmd = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--work", str(tmp_path / "work"),
           "--out", str(out), "--weights-dir", str(tmp_path / "no_weights"), "--max-train-runs", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=child_env(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["device"] == "cpu"
    resume = report["resume"]
    assert resume["deterministic"] and resume["comparison"]["equal"]
    assert resume["comparison"]["max_abs_weight_diff"] == 0.0
    ie = report["inference_eval"]
    assert ie["eval"]["num_videos"] == 2 and {"ssim", "psnr"} <= set(ie["eval"]["values"])
    # flolpips needs PWC-Net weights, absent from the (empty) weights dir: skipped, not failed.
    assert "flolpips" in ie["skipped_metrics"]
    assert set(ie["eval"]["values"]) | set(ie["skipped_metrics"]) == {"ssim", "psnr", "lpips", "flolpips"}
    assert ie["inference"]["videos_per_s_process"] > 0 and ie["eval"]["videos_per_s_process"] > 0
    runs = report["train_throughput"]
    assert [(r["stage"], r["parallel"], r["grad_checkpoint"]) for r in runs] == \
        [(1, "ddp", False), (3, "ddp", False), (1, "fsdp", True), (3, "fsdp", True)]
    assert runs[0]["process"]["rc"] == 0 and runs[0]["samples_per_s"] > 0 and runs[0]["peak_cuda_mb"] is None
    assert all("skipped" in r for r in runs[1:])
    assert str(out) in proc.stdout.strip().splitlines()[-1]
