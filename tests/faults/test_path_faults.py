"""Paths that do not lead where the user thinks: the error says what was looked for, where
(issue 19.11). Relative rows of a table are resolved against the folder of the table's path as
the user gave it: for a symlinked CSV that is the link's folder, not the target's."""

from __future__ import annotations

import shutil

import pytest

from opensora_vae.data.dataset import UnreadableSamplesError
from tests.helpers import CLIP_17, make_dataset


def _write_table(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.csv").write_text("path\n" + "".join(f"{r}\n" for r in rows))
    return folder / "data.csv"


def test_symlinked_csv_resolves_rows_against_the_links_folder(tmp_path):
    real = _write_table(tmp_path / "real", ["clips/a.mp4", "clips/b.mp4"])
    (tmp_path / "real" / "clips").mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(CLIP_17, tmp_path / "real" / "clips" / name)
    (tmp_path / "link").mkdir()
    link = tmp_path / "link" / "data.csv"
    link.symlink_to(real)

    assert make_dataset(real, num_frames=17, image_size=(16, 16))[0]["skipped"] == []
    with pytest.raises(UnreadableSamplesError) as err:
        make_dataset(link, num_frames=17, image_size=(16, 16), max_retries=20)[0]
    # a 2-row table: two reads, both named where they were looked for (not "20 consecutive ...")
    assert err.value.reason == (f"none of the 2 rows of {link} could be read (relative rows are resolved against "
                                f"{tmp_path / 'link'}): {tmp_path / 'link' / 'clips' / 'a.mp4'}: file not found; "
                                f"{tmp_path / 'link' / 'clips' / 'b.mp4'}: file not found: check your CSV")
