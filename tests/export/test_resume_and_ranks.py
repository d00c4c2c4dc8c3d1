"""A killed export finishes, when run again, with exactly the bytes of an uninterrupted one; two
processes write what one writes, and their statistics agree to 1e-6."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pandas as pd
import pytest

from tests.export.helpers import export_command, folder_bytes, run_export_subprocess
from tests.helpers import REPO, child_env

ONE_ROW_SHARDS = "export.shard_size=1"


@pytest.fixture(scope="module")
def reference(export_inputs):
    # In a child like the runs it is compared with: the same thread count, so the same float sums.
    out = export_inputs["root"] / "reference"
    proc = run_export_subprocess(export_inputs, out, ONE_ROW_SHARDS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _kill_when(inputs, out, ready) -> bool:
    """Starts the export and SIGKILLs it once `ready()` holds; False if it finished first."""
    proc = subprocess.Popen(export_command(inputs, out, ONE_ROW_SHARDS), cwd=REPO, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                return True
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_at_random_points_then_rerun_equals_an_uninterrupted_run(export_inputs, reference, tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "killed"
    shards = out / "shards"
    count = lambda: len(list(shards.glob("*.safetensors"))) if shards.is_dir() else 0  # noqa: E731
    # 1: right after a random number of shards exists (often inside the next shard's write)
    target = rng.randint(1, 5)
    _kill_when(export_inputs, out, lambda: count() >= target)
    partial = count()
    # 2: at a random moment after the previous shard count changes
    start, delay = count(), rng.uniform(0.0, 1.5)
    moment = {}
    _kill_when(export_inputs, out, lambda: count() > start and time.time() - moment.setdefault("t", time.time()) > delay)
    # a temporary file as a kill inside a write leaves it: never part of the export
    if shards.is_dir():
        (shards / f".tmp-{999999:06d}.safetensors.1").write_bytes(b"\0" * 50)
    proc = run_export_subprocess(export_inputs, out, ONE_ROW_SHARDS)
    assert proc.returncode == 0, f"seed {seed}: {proc.stderr[-2000:]}"
    assert folder_bytes(out) == folder_bytes(reference), f"seed {seed}, killed after {partial} shards"
    assert len(pd.read_parquet(out / "index.parquet")) == 7


def test_two_processes_write_what_one_writes(export_inputs, reference, tmp_path):
    out = tmp_path / "two"
    proc = run_export_subprocess(export_inputs, out, ONE_ROW_SHARDS, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((reference / "manifest.json").read_text())["stats"]
    two = json.loads((out / "manifest.json").read_text())["stats"]
    for key in ("mean", "std"):
        assert two[key] == pytest.approx(one[key], abs=1e-6, rel=0)
    assert two["count"] == one["count"]
    ours, theirs = folder_bytes(out), folder_bytes(reference)
    assert {k for k in ours if k.startswith("shards/")} == {k for k in theirs if k.startswith("shards/")}
    assert all(ours[k] == theirs[k] for k in ours if k != "manifest.json")  # shards and index: same bytes
    assert "shift=(" in proc.stdout and "scale=(" in proc.stdout  # printed as the model config writes them


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_one_line_error(export_inputs, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = run_export_subprocess(export_inputs, folder / "out")
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2 and "error: --save-dir" in proc.stderr and "not writable" in proc.stderr
    assert not (folder / "out").exists()
