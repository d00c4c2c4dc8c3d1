"""`scripts/make_csv.py` / `build_csv`: what it lists, what it leaves out and why, with counts
taken from the CSV and the summary object."""

import pandas as pd
from PIL import Image

from opensora_vae.data.csv_tools import build_csv
from opensora_vae.data.video_io import VideoFile

from tests.helpers import moving_frames, stored_turned_back, write_test_video


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
