"""Checkpoint dirs are atomic and discoverable; clip mixing is a pure function of (seed, step)."""

import errno
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from opensora_vae.config import load_config
from opensora_vae.models import CheckpointError
from opensora_vae.errors import OutputExistsError
from opensora_vae.training import checkpoint as ckpt_io
from opensora_vae.training import mixed_num_frames
from opensora_vae.training.checkpoint import CheckpointManager, DiskFullError, OutputsInUseError

from tests.helpers import TINY_STAGE1, checkpoint_manager, save_step, step_dirs


def _fake_ckpt(outputs: Path, step: int, files=("model/config.json", "model/model.safetensors",
                                                 "training_state.pt", "config.py")) -> Path:
    d = outputs / ckpt_io.step_dir_name(step)
    for name in files:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("x")
    return d


def test_latest_checkpoint_skips_temp_and_incomplete_dirs(tmp_path):
    assert ckpt_io.find_latest_checkpoint(tmp_path / "nothing") is None
    good = _fake_ckpt(tmp_path, 20)
    _fake_ckpt(tmp_path, 10)
    _fake_ckpt(tmp_path, 30, files=("model/config.json", "config.py"))  # crashed mid-copy
    (tmp_path / f"{ckpt_io.TMP_PREFIX}step_000000040.999").mkdir()  # interrupted save
    (tmp_path / "step_50").mkdir()  # not our name pattern
    assert ckpt_io.find_latest_checkpoint(tmp_path) == good
    manager = CheckpointManager(tmp_path, keep_last=3)
    assert manager.resolve("auto") == good
    with pytest.raises(CheckpointError, match="missing model/model.safetensors, training_state.pt"):
        manager.resolve(str(tmp_path / "step_000000030"), overwrite=True)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        manager.resolve(str(tmp_path / "missing"))
    # An EMA dir that lost its weights makes the checkpoint incomplete too.
    (good / "ema").mkdir()
    (good / "ema" / "config.json").write_text("x")
    assert ckpt_io.find_latest_checkpoint(tmp_path) == tmp_path / "step_000000010"


def test_a_fresh_run_or_a_rollback_never_replaces_existing_checkpoints_unless_asked(tmp_path):
    _fake_ckpt(tmp_path, 10)
    _fake_ckpt(tmp_path, 20)
    with pytest.raises(OutputExistsError, match="--load auto"):
        CheckpointManager(tmp_path, 3).resolve(None)
    assert CheckpointManager(tmp_path, 3).resolve(None, overwrite=True) is None
    with pytest.raises(OutputExistsError, match="step_000000020"):
        CheckpointManager(tmp_path, 3).resolve(str(tmp_path / "step_000000010"))
    assert CheckpointManager(tmp_path, 3).resolve(str(tmp_path / "step_000000010"), overwrite=True) == \
        tmp_path / "step_000000010"
    assert CheckpointManager(tmp_path / "new", 3).resolve(None) is None  # an empty folder is fine


def test_pruning_removes_only_this_lineage_and_never_a_newer_branch(tmp_path, tiny_pipeline):
    cfg = load_config(TINY_STAGE1)
    first = checkpoint_manager(tmp_path, 2, tiny_pipeline)
    for step in (1, 2, 3, 4):
        save_step(first, step, cfg)
    assert step_dirs(tmp_path) == ["step_000000003", "step_000000004"]
    # A second, unrelated run into the same folder (overwrite=True) prunes only its own.
    other = checkpoint_manager(tmp_path, 1, tiny_pipeline)
    assert other.resolve(None, overwrite=True) is None
    for step in (5, 6):
        save_step(other, step, cfg)
    assert step_dirs(tmp_path) == ["step_000000003", "step_000000004", "step_000000006"]
    # A rollback to step 3 keeps step 4 and 6 (a later branch) until it overwrites them itself.
    rollback = checkpoint_manager(tmp_path, 1, tiny_pipeline)
    assert rollback.resolve(str(tmp_path / "step_000000003"), overwrite=True) == tmp_path / "step_000000003"
    assert rollback.lineage[:-1] == first.lineage
    save_step(rollback, 4, cfg)  # replaces the old step 4 (same lineage), prunes step 3
    assert step_dirs(tmp_path) == ["step_000000004", "step_000000006"]
    assert ckpt_io.read_lineage(tmp_path / "step_000000004") == rollback.lineage
    assert ckpt_io.read_training_state(tmp_path / "step_000000004")["lineage"] == rollback.lineage


def test_the_outputs_lock_refuses_a_second_run_and_stale_temp_dirs_are_removed(tmp_path):
    stale = tmp_path / f"{ckpt_io.TMP_PREFIX}step_000000007.12345"
    (stale / "model").mkdir(parents=True)
    owner = CheckpointManager(tmp_path, 3)
    owner.acquire()
    assert not stale.exists()
    with pytest.raises(OutputsInUseError, match=f"pid {os.getpid()}"):
        CheckpointManager(tmp_path, 3).acquire()
    owner.release()
    again = CheckpointManager(tmp_path, 3)
    again.acquire()  # released: the next run may take it
    again.release()


def test_a_lock_held_by_a_dead_process_does_not_block(tmp_path):
    code = ("import fcntl, os, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write('pid dead'); f.flush(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / ckpt_io.LOCK_NAME)], check=True)
    manager = CheckpointManager(tmp_path, 3)
    manager.acquire()
    manager.release()


def test_a_full_disk_is_refused_before_writing_and_keeps_older_checkpoints(tmp_path, tiny_pipeline, monkeypatch):
    cfg = load_config(TINY_STAGE1)
    manager = checkpoint_manager(tmp_path, 1, tiny_pipeline)
    save_step(manager, 1, cfg)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ckpt_io.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(DiskFullError, match="needed ~"):
        save_step(manager, 2, cfg)
    assert step_dirs(tmp_path) == ["step_000000001"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(ckpt_io.TMP_PREFIX)]


def test_a_write_that_runs_out_of_space_removes_its_partial_dir(tmp_path, tiny_pipeline, monkeypatch):
    cfg = load_config(TINY_STAGE1)
    manager = checkpoint_manager(tmp_path, 1, tiny_pipeline)
    save_step(manager, 1, cfg)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_io.torch, "save", no_space)
    with pytest.raises(DiskFullError):
        save_step(manager, 2, cfg)
    assert step_dirs(tmp_path) == ["step_000000001"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(ckpt_io.TMP_PREFIX)]


def test_write_checkpoint_is_complete_and_replaces_the_same_step(tmp_path, tiny_pipeline):
    cfg = load_config(TINY_STAGE1)
    state, config = tiny_pipeline.state_dict(), tiny_pipeline.export_config()
    for step in (1, 2, 3):
        path = ckpt_io.write_checkpoint(tmp_path, step, cfg, config,
                                        {"model": state, "ema": state, "counters": {"global_step": step}})
        assert ckpt_io.missing_files(path) == []
    again = ckpt_io.write_checkpoint(tmp_path, 3, cfg, config, {"model": state, "counters": {"global_step": 33}})
    assert ckpt_io.read_training_state(again)["global_step"] == 33 and not (again / "ema").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(ckpt_io.TMP_PREFIX)]
    # The dumped config is the resolved one and loads back through the schema check.
    reloaded = load_config(tmp_path / "step_000000002" / "config.py")
    assert reloaded.to_dict() == {k: v for k, v in cfg.to_dict().items() if k != "config_path"} | {
        "config_path": str(tmp_path / "step_000000002" / "config.py")}
    from opensora_vae.models import VideoVAEPipeline

    loaded = VideoVAEPipeline.from_pretrained(tmp_path / "step_000000002" / "model")
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_mixed_video_image_keeps_frame_zero_with_the_configured_probability():
    random.seed(0)
    torch.manual_seed(0)
    draws = [mixed_num_frames("mixed_video_image", 0.2, 17, seed=42, step=s) for s in range(1, 4001)]
    random.seed(123)  # global RNG state must not matter: every rank draws the same
    torch.manual_seed(123)
    assert draws == [mixed_num_frames("mixed_video_image", 0.2, 17, seed=42, step=s) for s in range(1, 4001)]
    assert set(draws) == {1, 17}
    assert abs(draws.count(1) / len(draws) - 0.2) < 0.02
    other_seed = [mixed_num_frames("mixed_video_image", 0.2, 17, seed=7, step=s) for s in range(1, 4001)]
    assert other_seed != draws


def test_mixed_video_random_draws_prefix_lengths_uniformly():
    counts = Counter(mixed_num_frames("mixed_video_random", 0.0, 33, seed=1, step=s) for s in range(1, 6601))
    assert set(counts) == set(range(1, 34))
    assert max(counts.values()) < 2 * min(counts.values())  # ~200 each
    assert mixed_num_frames(None, 0.5, 17, seed=1, step=5) == 17


def test_mixed_draw_is_stable_across_processes():
    # str seeds are hashed with SHA-512, not Python's salted hash(): the draws are fixed values,
    # the same in every process and on every machine (a resumed run relies on it).
    assert [mixed_num_frames("mixed_video_random", 0.0, 33, 42, s) for s in range(1, 9)] == GOLDEN_RANDOM
    assert [mixed_num_frames("mixed_video_image", 0.2, 17, 42, s) for s in range(1, 16)] == GOLDEN_IMAGE


GOLDEN_RANDOM = [30, 33, 4, 1, 20, 30, 7, 33]
GOLDEN_IMAGE = [17] * 8 + [1] + [17] * 3 + [1, 17, 1]
