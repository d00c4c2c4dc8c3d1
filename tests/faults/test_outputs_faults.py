"""The outputs folder of a training run: nothing lost, nothing mixed (issue cases 2, 3, 7) and
errors under torchrun reported once, in the log too (first-day issue, item 2)."""

from __future__ import annotations

import json
import time

import pytest

from opensora_vae.training import checkpoint as ckpt_io
from tests.helpers import (FAST_TRAIN_OPTIONS, TINY_STAGE1, TRAIN_ENTRY, finish, kill_run, make_media_csv, run,
                           run_entry, start, torchrun_cmd, train_cmd)


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return make_media_csv(tmp_path_factory.mktemp("media"), num_images=3)


def _snapshot(outputs):
    return {p.name: (p / "model" / "model.safetensors").stat().st_mtime_ns
            for p in sorted(outputs.glob("step_*"))}


def _train(data_csv, outputs, *options):
    return run_entry(TRAIN_ENTRY, [TINY_STAGE1, "--data-path", data_csv, "--outputs", outputs,
                                   "--cfg-options", *FAST_TRAIN_OPTIONS, "ckpt_every=1", "keep_last_ckpts=3",
                                   *options])


def test_a_new_run_into_used_outputs_is_refused_and_keeps_the_old_checkpoints(data_csv, tmp_path, capsys):
    outputs = tmp_path / "out"
    assert _train(data_csv, outputs, "max_steps=5") == 0
    before = _snapshot(outputs)
    assert list(before) == ["step_000000003", "step_000000004", "step_000000005"]
    capsys.readouterr()
    assert _train(data_csv, outputs, "max_steps=8") == 2
    err = capsys.readouterr().err
    assert "--load auto" in err and "overwrite=True" in err and "Traceback" not in err
    assert _snapshot(outputs) == before
    # A rollback past newer checkpoints is refused the same way.
    assert _train(data_csv, outputs, "max_steps=8", "load=" + str(outputs / "step_000000003")) == 2
    assert _snapshot(outputs) == before
    # With overwrite=True a fresh run may share the folder, and prunes only its own checkpoints.
    assert _train(data_csv, outputs, "max_steps=2", "overwrite=True", "keep_last_ckpts=1") == 0
    after = _snapshot(outputs)
    assert list(after) == ["step_000000002", "step_000000003", "step_000000004", "step_000000005"]
    assert {k: after[k] for k in before} == before


def test_resume_continues_and_prunes_its_own_lineage(data_csv, tmp_path):
    outputs = tmp_path / "out"
    assert _train(data_csv, outputs, "max_steps=3") == 0
    assert _train(data_csv, outputs, "max_steps=6", "load=auto") == 0
    assert list(_snapshot(outputs)) == ["step_000000004", "step_000000005", "step_000000006"]
    lineage = json.loads((outputs / "step_000000006" / ckpt_io.LINEAGE_NAME).read_text())["lineage"]
    first = json.loads((outputs / "step_000000004" / ckpt_io.LINEAGE_NAME).read_text())["lineage"]
    assert len(lineage) == 2 and first == lineage  # both written by the resumed run


def test_a_second_run_on_the_same_outputs_at_the_same_time_is_refused(data_csv, tmp_path):
    outputs = tmp_path / "out"
    first = start(train_cmd(data_csv, outputs, "max_steps=400", "ckpt_every=1000"))
    try:
        deadline = time.monotonic() + 120
        while not (outputs / "train.log").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # train.log is written once the run holds the lock
        second = run(train_cmd(data_csv, outputs, "max_steps=2", "load=auto"), timeout=120)
        assert second.code == 2 and "in use by a running training" in second.out, second.out
        assert not list(outputs.glob("step_*"))
    finally:
        kill_run(first)
        finish(first, timeout=60)
    # The lock died with the process: the folder can be resumed now.
    third = run(train_cmd(data_csv, outputs, "max_steps=1", "load=auto"), timeout=120)
    assert third.code == 0, third.out


def test_a_full_disk_stops_with_exit_2_and_keeps_the_older_checkpoint(data_csv, tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "out"
    real = ckpt_io.shutil.disk_usage
    calls = {"n": 0}

    def disk_usage(path):
        calls["n"] += 1
        usage = real(path)
        # The first checkpoint fits; from the second on the disk is full.
        return usage if calls["n"] == 1 else usage._replace(free=4096)

    monkeypatch.setattr(ckpt_io.shutil, "disk_usage", disk_usage)
    assert _train(data_csv, outputs, "max_steps=3") == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and "needed ~" in err and "Traceback" not in err
    assert list(_snapshot(outputs)) == ["step_000000001"]
    assert not [p for p in outputs.iterdir() if p.name.startswith(ckpt_io.TMP_PREFIX)]
    assert "no space left on device" in (outputs / "train.log").read_text()  # the abort is in the log


@pytest.mark.slow
def test_torchrun_user_error_is_reported_once_without_peer_tracebacks(data_csv, tmp_path):
    outputs = tmp_path / "out"
    cmd = torchrun_cmd(2, TRAIN_ENTRY, TINY_STAGE1, "--data-path", data_csv, "--outputs", outputs,
                       "--load", tmp_path / "missing_step", "--cfg-options", *FAST_TRAIN_OPTIONS)
    result = run(cmd, timeout=180)
    assert result.code != 0
    assert result.out.count("--load " + str(tmp_path / "missing_step") + ": no such") >= 1
    assert result.out.count("error: --load") == 1 and "error (rank 1)" not in result.out, result.out
    # No rank's traceback (torchrun's launcher prints its own ChildFailedError, not ours).
    assert "Connection reset" not in result.out and "opensora_vae/" not in result.out, result.out
    assert "traceback : --load" in result.out  # torchrun's summary names the cause (error file)
