"""Awkward media a user or an attacker can put in a dataset CSV: paths that are not regular files,
huge frames. Each case asserts the outcome (the exception type and its structured fields, skip
counts, memory), not the wording of a message. Phone videos and GIFs: tests/data/test_decode_phone.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from opensora_vae.data.video_io import (FrameTooLargeError, MediaReadError, NotARegularFileError, VideoFile,
                                        read_image)

from tests.helpers import (CLIP_17, FAST_TRAIN_OPTIONS, INFER_ENTRY, REPO, TINY_INFER, TINY_STAGE1, TRAIN_ENTRY,
                           load_script, make_dataset, run_entry, write_csv)


# ----------------------------------------------------------------------------- not regular files


@pytest.fixture()
def special_paths(tmp_path) -> dict[str, Path]:
    """Paths named like media that are a directory, a FIFO and a character device."""
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.mp4")
    return {"directory": tmp_path / "folder.mp4", "directory image": tmp_path / "folder.png",
            "fifo": tmp_path / "pipe.mp4", "character device": Path(os.devnull)}


@pytest.mark.timeout(60)  # opening a FIFO for reading would block until a writer comes
def test_non_regular_files_say_what_they_are(special_paths):
    for name, path in special_paths.items():
        reader = read_image if name.endswith("image") else VideoFile
        with pytest.raises(NotARegularFileError) as err:
            reader(path)
        assert err.value.file_type == name.removesuffix(" image"), name
        assert isinstance(err.value, MediaReadError) and err.value.path == str(path)


@pytest.mark.timeout(60)
def test_dataset_skips_non_regular_files_naming_their_type(special_paths, tmp_path):
    rows = [*special_paths.values(), CLIP_17]
    ds = make_dataset(write_csv(tmp_path / "special.csv", rows), num_frames=17, image_size=(16, 16), max_retries=20)
    item = ds[0]
    assert item["index"] == len(rows) - 1  # every special path skipped, then the clip
    assert [p for p, _ in item["skipped"]] == [str(p) for p in special_paths.values()]
    for (_, reason), name in zip(item["skipped"], special_paths):
        assert name.removesuffix(" image") in reason


# ----------------------------------------------------------------------------- huge frames


@pytest.fixture(scope="module")
def bench_decode_memory():
    return load_script(REPO / "benchmarks" / "bench_decode_memory.py")


@pytest.mark.slow  # two interpreters and a 1080p encode: ~8 s on an idle 2-core machine
@pytest.mark.timeout(300)
def test_a_1080p_sample_needs_less_memory_than_its_raw_frames(bench_decode_memory, tmp_path):
    # One 17-frame 256x256 sample of a 1920x1080 video, read as the dataset reads it, in a fresh
    # process: its peak stays below the 17 raw RGB frames at full resolution (106 MB). Reading the
    # whole clip first and converting it to float32 took 5x that (927 MB: benchmarks/RESULTS.md).
    source = bench_decode_memory.make_source(tmp_path / "1080p.mp4", 1920, 1080, num_frames=21)
    result = bench_decode_memory.run_child(source, "from_video")
    raw_clip_mb = 17 * 1920 * 1080 * 3 / 2**20
    assert result["shape"] == [3, 17, 256, 256]
    assert result["peak_mb"] < raw_clip_mb, result


@pytest.mark.timeout(120)
def test_a_huge_gif_of_a_few_kilobytes_is_refused_before_decoding(tmp_path):
    # 8192x8192: ~100 KB on disk, 200 MB a frame as RGB. Refused from its header.
    frames = [Image.new("P", (8192, 8192), color) for color in (0, 1)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    huge = tmp_path / "huge.gif"
    frames[0].save(huge, save_all=True, append_images=frames[1:], duration=[100, 300])
    del frames
    with pytest.raises(FrameTooLargeError) as err:
        VideoFile(huge)
    assert (err.value.width, err.value.height) == (8192, 8192) and err.value.limit < 8192 * 8192
    ds = make_dataset(write_csv(tmp_path / "huge.csv", [huge, CLIP_17]), num_frames=17, image_size=(16, 16), max_retries=20)
    item = ds[0]
    assert item["index"] == 1 and [p for p, _ in item["skipped"]] == [str(huge)]


# ----------------------------------------------------------------------------- reads that never return


@pytest.fixture()
def stuck_videos(monkeypatch):
    """Opening any video blocks (a hung network mount, a FIFO nobody writes); released at teardown
    so the reader threads left behind end."""
    import threading

    from opensora_vae.data import clips

    release = threading.Event()

    class StuckVideoFile:
        def __init__(self, path):
            release.wait()
            raise OSError("released")

    monkeypatch.setattr(clips, "VideoFile", StuckVideoFile)
    yield
    release.set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_read_that_never_returns_stops_with_an_error_naming_the_file(stuck_videos, tmp_path, workers):
    from opensora_vae.data import build_dataloader
    from opensora_vae.data.clips import ReadTimeoutError

    csv = write_csv(tmp_path / "d.csv", [CLIP_17])
    ds = make_dataset(csv, num_frames=17, image_size=(16, 16), max_retries=20, read_timeout_s=0.5)
    loader = build_dataloader(ds, batch_size=1, num_workers=workers)
    with pytest.raises(ReadTimeoutError) as err:
        next(iter(loader))
    line = err.value.one_line()  # with workers: re-raised here with the worker's traceback
    assert str(CLIP_17) in line and "dataset.read_timeout_s" in line and "\n" not in line


@pytest.mark.timeout(120)
def test_training_with_a_stuck_read_and_no_workers_exits_2(stuck_videos, tmp_path, capsys):
    csv = write_csv(tmp_path / "d.csv", [CLIP_17])
    code = run_entry(TRAIN_ENTRY, [TINY_STAGE1, "--data-path", csv, "--outputs", tmp_path / "run",
                                   "--cfg-options", *FAST_TRAIN_OPTIONS, "num_workers=0", "max_steps=2",
                                   "dataset.read_timeout_s=1"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("error: ") and str(CLIP_17) in error, error
    assert not list((tmp_path / "run").glob("step_*"))


@pytest.mark.timeout(120)
def test_inference_with_a_stuck_read_and_no_workers_exits_2(stuck_videos, broken_checkpoints, tmp_path, capsys):
    csv = write_csv(tmp_path / "d.csv", [CLIP_17])
    code = run_entry(INFER_ENTRY, [TINY_INFER, "--ckpt-path", broken_checkpoints["good"], "--data-path", csv,
                                   "--save-dir", tmp_path / "s", "--cfg-options", "num_workers=0",
                                   "dataset.read_timeout_s=1"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("error: ") and str(CLIP_17) in error, error
    assert not list((tmp_path / "run").glob("step_*"))
    assert not (tmp_path / "s_metrics.json").exists()


def test_read_timeout_must_be_positive(tmp_path):
    from opensora_vae.config import ConfigError, load_config

    for kind, path in (("inference", TINY_INFER), ("train", TINY_STAGE1)):
        assert load_config(path, kind, cfg_options={"dataset.read_timeout_s": 2.5}).dataset.read_timeout_s == 2.5
        with pytest.raises(ConfigError, match="read_timeout_s"):
            load_config(path, kind, cfg_options={"dataset.read_timeout_s": 0})
