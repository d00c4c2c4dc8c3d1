"""Awkward media a user or an attacker can put in a dataset CSV: paths that are not regular files,
huge frames, phone videos. Each case asserts the outcome (the exception type and its structured
fields, skip counts, frames read), not the wording of a message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opensora_vae.data import VideoDataset
from opensora_vae.data.video_io import MediaReadError, NotARegularFileError, VideoFile, read_image

from tests.helpers import CLIP_17

from .conftest import write_csv


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
    ds = VideoDataset(write_csv(tmp_path / "special.csv", rows), num_frames=17, image_size=(16, 16))
    item = ds[0]
    assert item["index"] == len(rows) - 1  # every special path skipped, then the clip
    assert [p for p, _ in item["skipped"]] == [str(p) for p in special_paths.values()]
    for (_, reason), name in zip(item["skipped"], special_paths):
        assert name.removesuffix(" image") in reason
