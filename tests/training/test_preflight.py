"""The preflight checks before step 1 (issue 23, items 1 and 3): clip lengths against the
stage's window, and the spatial VAE alone on the user's clips, recorded in
`<outputs>/preflight.json`."""

import json

import numpy as np
import pytest

from tests.helpers import CLIP_17, CLIP_100, TRAIN_ENTRY, TINY_TRAIN, make_media_csv, run_entry, tiny_train_cfg, \
    write_test_video
from opensora_vae.training import Trainer
from opensora_vae.training.preflight import ClipsTooShortError, _clip_frames, spatial_psnr


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory):
    """Three 20-frame videos: too short for stage 3's 33-frame window, long enough for 17."""
    folder = tmp_path_factory.mktemp("short")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        frames = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
        paths.append(write_test_video(folder / f"short{k}.mp4", frames))
    return paths


def _stage3(tmp_path, csv, **options):
    # No LPIPS network: the checks come before it would matter, and the VGG weights may be absent.
    return tiny_train_cfg(3, tmp_path / "out", csv, max_steps=1, perceptual_loss_weight=0.0, **options)


def test_most_clips_too_short_is_refused_before_any_output(tmp_path, short_clips):
    """4 of 5 videos shorter than 33 frames (the issue's case): a one-line error at start."""
    csv = make_media_csv(tmp_path / "data", num_images=1, videos=(CLIP_100, CLIP_17),
                         extra_rows=[str(p) for p in short_clips])
    with pytest.raises(ClipsTooShortError) as err:
        Trainer(_stage3(tmp_path, csv))
    assert "--min-frames 33" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    outputs = tmp_path / "cli_out"
    code = run_entry(TRAIN_ENTRY, [TINY_TRAIN[3], "--data-path", csv, "--outputs", outputs,
                                   "--cfg-options", "max_steps=1", "perceptual_loss_weight=0.0"])
    assert code == 2 and not outputs.exists()


def test_some_clips_too_short_are_counted_and_training_starts(tmp_path, short_clips):
    csv = make_media_csv(tmp_path / "data", num_images=2, videos=(CLIP_100, CLIP_100, CLIP_100),
                         extra_rows=[str(short_clips[0])])
    trainer = Trainer(_stage3(tmp_path, csv))
    trainer.close()
    tables = json.loads((tmp_path / "out" / "preflight.json").read_text())["clip_lengths"]
    assert tables["needed_frames"] == 33 and tables["rows_total"] == 6 and tables["rows_checked"] == 6
    assert tables["videos_checked"] == 4 and tables["too_short"] == 1 and tables["unreadable"] == 0
    assert tables["examples"] == [f"{short_clips[0]} (20 frames)"]


def test_large_tables_are_sampled(tmp_path, short_clips):
    csv = make_media_csv(tmp_path / "data", num_images=0, videos=(CLIP_17,) * 10)
    trainer = Trainer(tiny_train_cfg(1, tmp_path / "out", csv, max_steps=1, preflight_rows=4, preflight_clips=0))
    trainer.close()
    result = json.loads((tmp_path / "out" / "preflight.json").read_text())
    assert result["clip_lengths"]["rows_checked"] == 4 and result["clip_lengths"]["too_short"] == 0
    assert result["spatial_vae"] is None


def test_random_spatial_vae_is_flagged_with_its_psnr(tmp_path):
    """Stage 1 freezes a random spatial VAE here: its PSNR on the user's clips is recorded, below
    the threshold, and equals the spatial VAE's own reconstruction of those frames."""
    csv = make_media_csv(tmp_path / "data", num_images=2)
    trainer = Trainer(tiny_train_cfg(1, tmp_path / "out", csv, max_steps=1))
    try:
        spatial = json.loads((tmp_path / "out" / "preflight.json").read_text())["spatial_vae"]
        frames, clips = _clip_frames(trainer.dataset, 4)
        expected = spatial_psnr(trainer.pipe.spatial_vae.module, frames)
    finally:
        trainer.close()
    assert spatial["clips"] == clips == 3 and spatial["frames"] == 3 + 1 + 1  # video: 3 frames, images: 1
    assert spatial["psnr"] == pytest.approx(expected, abs=1e-3)
    assert spatial["psnr"] < 15.0 and spatial["threshold"] == 15.0
    assert spatial["below_threshold"] is True and spatial["frozen"] is True


def test_preflight_keys_are_validated():
    from opensora_vae.config import load_config
    from opensora_vae.errors import UserError

    for option in ("preflight_rows=-1", "preflight_clips=-2", "preflight_min_psnr=-5"):
        with pytest.raises(UserError):
            load_config(TINY_TRAIN[1], cfg_options=[option])
