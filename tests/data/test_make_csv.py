"""`scripts/make_csv.py` / `build_csv`: what it lists, what it leaves out and why, with counts
taken from the CSV and the summary object."""

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from opensora_vae.data.csv_tools import build_csv
from opensora_vae.data.video_io import VideoFile

from tests.helpers import MAKE_CSV_ENTRY, moving_frames, run_entry, stored_turned_back, write_test_video


def test_phone_video_and_gif_are_listed_with_the_size_frames_come_out_in(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    upright = moving_frames()  # 64 high, 48 wide
    write_test_video(media / "phone.mp4", stored_turned_back(upright, -90), rotation=-90)
    frames = [Image.fromarray(f) for f in upright[:5, :40, :30]]
    frames[0].save(media / "anim.gif", save_all=True, append_images=frames[1:], duration=[50, 200, 50, 50, 300])
    summary = build_csv(media, tmp_path / "data.csv")
    table = pd.read_csv(tmp_path / "data.csv").set_index("path")
    assert summary.num_videos == 2 and summary.num_images == 0 and summary.unreadable == []
    assert table.loc["media/phone.mp4", ["num_frames", "height", "width"]].tolist() == [20, 64, 48]
    assert table.loc["media/anim.gif", ["num_frames", "height", "width"]].tolist() == [5, 40, 30]
    for name, row in table.iterrows():
        frames = VideoFile(tmp_path / name).read([0, row.num_frames - 1])
        assert frames.shape[1:3] == (row.height, row.width), name


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """20-, 5- and 1-frame videos, a 5-frame GIF, an image, an unreadable .mp4 and two other files."""
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    frames = moving_frames(32, 48)
    write_test_video(media / "long.mp4", frames)
    write_test_video(media / "sub" / "short.mp4", frames[:5])
    write_test_video(media / "still.mp4", frames[:1])
    Image.fromarray(frames[0]).save(media / "sub" / "pic.png")
    gif = [Image.fromarray(f) for f in frames[:5]]
    gif[0].save(media / "anim.gif", save_all=True, append_images=gif[1:], duration=80)
    (media / "broken.mp4").write_text("not a video")
    (media / "notes.txt").write_text("captions")
    (media / "sub" / "meta.json").write_text("{}")
    return media


def test_min_frames_leaves_out_short_clips_and_lists_everything_left_out(mixed_folder, tmp_path):
    summary = build_csv(mixed_folder, tmp_path / "all.csv")
    assert len(pd.read_csv(tmp_path / "all.csv")) == 5 and summary.too_short == []
    summary = build_csv(mixed_folder, tmp_path / "d.csv", min_frames=17)
    table = pd.read_csv(tmp_path / "d.csv")
    # Kept: the long clip, and the 1-frame video and the image (used as static clips).
    assert sorted(table["path"]) == ["media/long.mp4", "media/still.mp4", "media/sub/pic.png"]
    assert (summary.num_videos, summary.num_images) == (2, 1)
    names = lambda pairs: sorted(Path(p).name for p, _ in pairs)  # noqa: E731
    assert names(summary.too_short) == ["anim.gif", "short.mp4"]
    assert sorted(n for _, n in summary.too_short) == [5, 5]
    assert names(summary.unreadable) == ["broken.mp4"]
    assert sorted(Path(p).name for p in summary.ignored) == ["meta.json", "notes.txt"]
    assert len(summary.left_out) == 5  # every file found is either in the CSV or left out with a reason
    assert len(table) + len(summary.left_out) == 8


def test_make_csv_prints_what_it_left_out_and_exits_0(mixed_folder, tmp_path, capsys):
    out = tmp_path / "d.csv"
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, out, "--min-frames", 17]) == 0
    assert len(pd.read_csv(out)) == 3
    printed = capsys.readouterr().out
    for name in ("anim.gif", "short.mp4", "broken.mp4", "notes.txt", "meta.json"):
        assert name in printed, name
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, tmp_path / "e.csv", "--min-frames", 0]) == 2
    assert not (tmp_path / "e.csv").exists()


def test_make_csv_of_a_missing_folder_is_a_one_line_error(tmp_path):
    assert run_entry(MAKE_CSV_ENTRY, [tmp_path / "nope", tmp_path / "d.csv"]) == 2
    assert not (tmp_path / "d.csv").exists()


def test_make_csv_never_overwrites_a_file_that_is_not_a_table(mixed_folder, tmp_path):
    video = tmp_path / "precious.mp4"
    write_test_video(video, moving_frames(num=4))
    before = video.read_bytes()
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, video]) == 2
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, video, "--overwrite"]) == 2  # not even with --overwrite
    assert video.read_bytes() == before
    notes = tmp_path / "notes.csv"  # a .csv name, but not a table (no `path` column)
    notes.write_text("remember the milk\n")
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, notes]) == 2
    assert notes.read_text() == "remember the milk\n"


def test_make_csv_keeps_a_table_when_the_folder_has_no_media_unless_overwrite(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no media here")
    table = tmp_path / "hand_edited.csv"
    text = "path,num_frames,caption\na.mp4,20,a cat\nb.png,1,a dog\n"
    table.write_text(text)
    assert run_entry(MAKE_CSV_ENTRY, [empty, table]) == 2
    assert table.read_text() == text
    assert run_entry(MAKE_CSV_ENTRY, [empty, table, "--overwrite"]) == 0
    assert list(pd.read_csv(table).columns) == ["path", "num_frames", "height", "width", "fps"]
    assert len(pd.read_csv(table)) == 0


def test_make_csv_replaces_its_own_table_on_a_rerun(mixed_folder, tmp_path):
    out = tmp_path / "d.csv"
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, out]) == 0
    first = out.read_text()
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, out, "--min-frames", 17]) == 0
    assert len(pd.read_csv(out)) == 3 and out.read_text() != first


def test_make_csv_to_a_folder_or_under_a_file_is_a_one_line_error(mixed_folder, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, folder]) == 2
    assert list(folder.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, blocker / "d.csv"]) == 2
    assert blocker.read_text() == "x"


def test_a_table_write_that_fails_keeps_the_old_table_and_leaves_no_temporary_file(mixed_folder, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "d.csv"
    assert run_entry(MAKE_CSV_ENTRY, [mixed_folder, out]) == 0
    before = out.read_text()

    def disk_full(self, path, **kwargs):
        Path(path).write_text("path,num_frames\nhalf")  # part of the table made it to disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(OSError):
        build_csv(mixed_folder, out)
    assert out.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["d.csv"]
