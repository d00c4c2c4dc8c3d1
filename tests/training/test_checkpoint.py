"""Checkpoint dirs are atomic and discoverable; clip mixing is a pure function of (seed, step)."""

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from opensora_vae.config import load_config
from opensora_vae.models import CheckpointError
from opensora_vae.training import checkpoint as ckpt_io
from opensora_vae.training import mixed_num_frames

from tests.helpers import REPO


def _fake_ckpt(outputs: Path, step: int, files=("model/config.json", "model/model.safetensors",
                                                 "training_state.pt", "config.py")) -> Path:
    d = outputs / ckpt_io.step_dir_name(step)
    for name in files:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("x")
    return d


def test_latest_checkpoint_skips_temp_and_incomplete_dirs(tmp_path, caplog):
    assert ckpt_io.find_latest_checkpoint(tmp_path / "nothing") is None
    good = _fake_ckpt(tmp_path, 20)
    _fake_ckpt(tmp_path, 10)
    _fake_ckpt(tmp_path, 30, files=("model/config.json", "config.py"))  # crashed mid-copy
    (tmp_path / f"{ckpt_io.TMP_PREFIX}step_000000040.999").mkdir()  # interrupted save
    (tmp_path / "step_50").mkdir()  # not our name pattern
    with caplog.at_level("INFO"):
        assert ckpt_io.find_latest_checkpoint(tmp_path) == good
    assert "ignoring incomplete checkpoint" in caplog.text and "step_000000030" in caplog.text
    assert "ignoring unfinished checkpoint temp dir" in caplog.text
    assert ckpt_io.resolve_load("auto", tmp_path) == good
    assert ckpt_io.resolve_load(None, tmp_path) is None
    with pytest.raises(CheckpointError, match="missing model/model.safetensors, training_state.pt"):
        ckpt_io.resolve_load(str(tmp_path / "step_000000030"), tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        ckpt_io.resolve_load(str(tmp_path / "missing"), tmp_path)
    # An EMA dir that lost its weights makes the checkpoint incomplete too.
    (good / "ema").mkdir()
    (good / "ema" / "config.json").write_text("x")
    assert ckpt_io.find_latest_checkpoint(tmp_path) == tmp_path / "step_000000010"


def test_write_checkpoint_is_complete_replaces_same_step_and_prunes(tmp_path, tiny_pipeline):
    cfg = load_config(REPO / "configs/vae/train/tiny/stage1.py")
    state = tiny_pipeline.state_dict()
    for step in (1, 2, 3):
        path = ckpt_io.write_checkpoint(tmp_path, step, tiny_pipeline.export_config(), state,
                                        {"global_step": step}, cfg, ema_state=state)
        assert ckpt_io.missing_files(path) == []
    again = ckpt_io.write_checkpoint(tmp_path, 3, tiny_pipeline.export_config(), state,
                                     {"global_step": 33}, cfg)
    assert ckpt_io.read_training_state(again)["global_step"] == 33 and not (again / "ema").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(ckpt_io.TMP_PREFIX)]
    removed = ckpt_io.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step_000000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000002", "step_000000003"]
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
    with pytest.raises(ValueError, match="unknown mixed_strategy"):
        mixed_num_frames("mixed_video_typo", 0.5, 17, seed=1, step=5)


def test_mixed_draw_is_stable_across_processes():
    # str seeds are hashed with SHA-512, not Python's salted hash(): the draws are fixed values,
    # the same in every process and on every machine (a resumed run relies on it).
    assert [mixed_num_frames("mixed_video_random", 0.0, 33, 42, s) for s in range(1, 9)] == GOLDEN_RANDOM
    assert [mixed_num_frames("mixed_video_image", 0.2, 17, 42, s) for s in range(1, 16)] == GOLDEN_IMAGE


GOLDEN_RANDOM = [30, 33, 4, 1, 20, 30, 7, 33]
GOLDEN_IMAGE = [17] * 8 + [1] + [17] * 3 + [1, 17, 1]
