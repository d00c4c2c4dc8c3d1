"""Transforms (hand-computed), the CSV dataset, its DataLoader, and the CSV builder."""

import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from opensora_vae.data import transforms as T
from opensora_vae.data.csv_tools import build_csv
from opensora_vae.data.dataset import VideoDataset, build_dataloader, load_table
from opensora_vae.data.video_io import read_video_frames, write_video

from tests.helpers import MAKE_CSV_ENTRY, child_env, make_dataset
from tests.helpers import CLIP_17 as _CLIP_17, CLIP_100 as _CLIP_100

CLIP_17, CLIP_100 = str(_CLIP_17), str(_CLIP_100)
RETRIES = 20  # callers pass the config value (dataset.max_retries); the dataset has no default


def write_csv(path, paths, **extra):
    pd.DataFrame({"path": paths, **extra}).to_csv(path, index=False)
    return str(path)


# ----------------------------------------------------------------------------- transforms


def test_center_crop_is_centred_and_keeps_target_aspect():
    clip = torch.arange(8, dtype=torch.float32).reshape(1, 1, 2, 4) / 10  # (T, C, H, W)
    out = T.center_crop_resize(clip, (2, 2))  # crop columns 1..2, no resize needed
    torch.testing.assert_close(out, torch.tensor([[[[0.1, 0.2], [0.5, 0.6]]]]))
    tall = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    out = T.center_crop_resize(tall, (2, 4))  # 1:2 target on a square: rows 1..2
    torch.testing.assert_close(out, tall[..., 1:3, :])


def test_center_crop_resize_bilinear_values():
    # 2x2 -> 4x4, bilinear with align_corners=False: source x = (x_out + 0.5) / 2 - 0.5,
    # clamped at the borders, so a [0, 1] row becomes [0, 0.25, 0.75, 1].
    clip = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    out = T.center_crop_resize(clip, (4, 4))
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.25, 0.75, 1.0]] * 4))


def test_resize_crop_to_fill_values():
    # 4x10 -> target 2x2: scale = max(2/4, 2/10) = 0.5 -> 2x5 (2x2 block means); the
    # reference's offset int((5 - 2) / 2) = 1 keeps columns 1..2.
    clip = torch.arange(40, dtype=torch.float32).reshape(1, 1, 4, 10)
    out = T.resize_crop_to_fill(clip, (2, 2))
    blocks = clip.reshape(4, 10).unfold(0, 2, 2).unfold(1, 2, 2).mean((-1, -2))  # 2x5
    torch.testing.assert_close(out[0, 0], blocks[:, 1:3])
    assert blocks[0, 1].item() == pytest.approx((2 + 3 + 12 + 13) / 4)
    tall = clip.transpose(-1, -2).contiguous()  # 10x4: same crop along rows
    torch.testing.assert_close(T.resize_crop_to_fill(tall, (2, 2))[0, 0], blocks.T[1:3, :])


def test_reference_crop_offset_on_the_bundled_geometry():
    # 405x720 -> 256x256 "center": square of 405 starting at round(315 / 2) = 158.
    clip = torch.zeros(1, 1, 405, 720)
    clip[..., 158] = 1.0
    clip[..., 157] = -1.0
    out = T.center_crop_resize(clip, 405)
    assert out.shape == (1, 1, 405, 405) and out[0, 0, 0, 0] == 1.0 and out.min() == 0.0


def test_video_transform_layout_and_range():
    frames = np.zeros((3, 4, 6, 3), dtype=np.uint8)
    frames[1] = 255
    frames[2, ..., 0] = 51
    out = T.VideoTransform("center", (4, 4))(T.frames_to_clip(frames))
    assert out.shape == (3, 3, 4, 4) and out.dtype == torch.float32  # (C, T, H, W)
    assert (out[:, 0] == -1).all() and (out[:, 1] == 1).all()
    torch.testing.assert_close(out[0, 2], torch.full((4, 4), 51 / 255 * 2 - 1))
    assert (out[1:, 2] == -1).all()


def test_temporal_indices():
    rng = np.random.default_rng(0)
    idx = T.temporal_indices(17, 17, 1, rng)
    assert idx.tolist() == list(range(17))
    # window 6 spread over 3 frames: linspace(s, s + 5, 3) = s + [0, 2.5, 5] -> s + [0, 2, 5]
    starts = set()
    for seed in range(50):
        idx = T.temporal_indices(8, 3, 2, np.random.default_rng(seed))
        assert (idx - idx[0]).tolist() == [0, 2, 5]
        starts.add(int(idx[0]))
    assert starts == {0, 1, 2}  # every start, including the last possible one
    with pytest.raises(ValueError, match="too short"):
        T.temporal_indices(5, 3, 2, rng)


# ----------------------------------------------------------------------------- dataset


def test_item_is_a_pure_function_of_seed_epoch_index(tmp_path):
    csv = write_csv(tmp_path / "d.csv", [CLIP_100, CLIP_17])
    ds = make_dataset(csv, num_frames=4, frame_interval=2, image_size=(32, 32), seed=5, max_retries=RETRIES)
    item = ds[0]
    # Recompute from the definition: rng([seed, epoch, index]) -> window -> transform.
    idx = T.temporal_indices(100, 4, 2, np.random.default_rng([5, 0, 0]))
    want = T.VideoTransform("center", (32, 32))(T.frames_to_clip(read_video_frames(CLIP_100, idx)))
    torch.testing.assert_close(item["video"], want, rtol=0, atol=0)
    assert item["index"] == 0 and item["path"] == CLIP_100 and item["is_image"] is False
    assert item["skipped"] == [] and item["video"].shape == (3, 4, 32, 32)
    assert -1.0 <= item["video"].min() < item["video"].max() <= 1.0

    other = make_dataset(csv, num_frames=4, frame_interval=2, image_size=(32, 32), seed=5, max_retries=RETRIES)
    torch.testing.assert_close(other[0]["video"], item["video"], rtol=0, atol=0)
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        starts.add(ds.rng(0).integers(0, 93))
    assert len(starts) > 1  # epochs draw different windows
    ds.set_epoch(3)
    a = ds[0]["video"]
    ds.set_epoch(0)
    torch.testing.assert_close(ds[0]["video"], item["video"], rtol=0, atol=0)
    ds.set_epoch(3)
    torch.testing.assert_close(ds[0]["video"], a, rtol=0, atol=0)


def test_relative_paths_spaces_and_non_ascii(tmp_path):
    media = tmp_path / "my clips" / "été 日本"
    media.mkdir(parents=True)
    shutil.copy(CLIP_17, media / "vidé o 1.mp4")
    table_dir = tmp_path / "tables"
    table_dir.mkdir()
    csv = write_csv(table_dir / "t.csv", ["../my clips/été 日本/vidé o 1.mp4"], caption=["kept"])
    ds = make_dataset(csv, num_frames=17, image_size=(16, 16), max_retries=RETRIES)
    assert list(ds.paths) == [str(media / "vidé o 1.mp4")]
    item = ds[0]
    want = T.VideoTransform("center", 16)(T.frames_to_clip(read_video_frames(CLIP_17, range(17))))
    torch.testing.assert_close(item["video"], want, rtol=0, atol=0)


def test_images_and_one_frame_videos_are_tiled_static_clips(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    write_video(tmp_path / "one.mkv", rgb[None], fps=24, lossless=True)
    csv = write_csv(tmp_path / "d.csv", ["img.png", "one.mkv"])
    ds = make_dataset(csv, num_frames=5, image_size=(8, 12), max_retries=RETRIES)
    want = T.VideoTransform("center", (8, 12))(T.frames_to_clip(rgb[None]))  # (3, 1, 8, 12)
    for i in range(2):
        item = ds[i]
        assert item["is_image"] is True and item["video"].shape == (3, 5, 8, 12)
        for t in range(5):
            torch.testing.assert_close(item["video"][:, t : t + 1], want, rtol=0, atol=0)


def test_short_videos_are_skipped_and_counted(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    csv = write_csv(tmp_path / "d.csv", [CLIP_17, CLIP_17, "ok.png", CLIP_100])
    ds = make_dataset(csv, num_frames=9, frame_interval=2, image_size=8, max_retries=RETRIES)  # needs 18 frames
    item = ds[0]
    assert item["index"] == 2 and item["is_image"] is True
    assert item["skipped"] == [(CLIP_17, "too short (17 < 18)")] * 2
    assert ds[3]["skipped"] == [] and ds[3]["video"].shape == (3, 9, 8, 8)
    total_skipped = sum(len(ds[i]["skipped"]) for i in range(len(ds)))
    assert total_skipped == 3  # 2 from index 0, 1 from index 1, none from 2 and 3


def test_unreadable_samples_are_replaced_deterministically(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.png").write_text("no")
    csv = write_csv(tmp_path / "d.csv", ["empty.mp4", "missing.mp4", "text.png", CLIP_17])
    ds = make_dataset(csv, num_frames=3, image_size=8, max_retries=RETRIES)
    item = ds[0]  # reported by the caller from item["skipped"] (the trainer: once per file)
    assert item["index"] == 3 and [os.path.basename(p) for p, _ in item["skipped"]] == [
        "empty.mp4", "missing.mp4", "text.png"]
    assert "empty" in item["skipped"][0][1] and "not found" in item["skipped"][1][1]
    assert ds[2]["index"] == 3 and len(ds[2]["skipped"]) == 1


def test_all_bad_csv_fails_quickly(tmp_path):
    (tmp_path / "bad.mp4").write_text("not a video")
    csv = write_csv(tmp_path / "d.csv", ["bad.mp4", "gone.mp4"] * 50)
    ds = make_dataset(csv, max_retries=7)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="7 consecutive unreadable samples.*check your CSV"):
        ds[10]
    assert time.monotonic() - start < 30  # generous bound: it must not loop over the table


def test_dataset_settings_have_no_second_default_beside_the_config(tmp_path):
    # The schema (configs/vae/_base_/default_train.py) is the one place that holds the defaults.
    import inspect

    params = inspect.signature(VideoDataset).parameters
    assert [n for n, p in params.items() if p.default is not inspect.Parameter.empty] == ["table"]
    with pytest.raises(TypeError, match="num_frames.*max_retries"):
        VideoDataset(write_csv(tmp_path / "d.csv", [CLIP_17]))


def test_bad_tables_raise_naming_the_file(tmp_path):
    pd.DataFrame({"video": ["a.mp4"]}).to_csv(tmp_path / "nocol.csv", index=False)
    (tmp_path / "header.csv").write_text("path,num_frames\n")
    (tmp_path / "zero.csv").write_bytes(b"")
    (tmp_path / "blank.csv").write_text("path\na.mp4\n\"\"\n")
    (tmp_path / "t.txt").write_text("path\na.mp4\n")
    cases = {"nocol.csv": "no 'path' column", "header.csv": "no rows", "zero.csv": "cannot read",
             "blank.csv": "empty 'path'", "t.txt": "unsupported", "absent.csv": "not found"}
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            make_dataset(tmp_path / name, max_retries=RETRIES)
        assert name in str(info.value)


def test_parquet_table(tmp_path):
    (tmp_path / "sub").mkdir()
    pd.DataFrame({"path": ["sub/../a.mp4", CLIP_17], "num_frames": [1, 17]}).to_parquet(tmp_path / "d.parquet")
    assert list(load_table(tmp_path / "d.parquet")) == [str(tmp_path / "a.mp4"), CLIP_17]


def test_paths_resolve_relative_to_the_table_folder_as_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    t = tmp_path / "t"
    t.mkdir()
    # Text that looks numeric or like a missing value is a path like any other.
    rows = ["a.mp4", "../up/b.mp4", "./x/./c.mp4", "/abs/d.mp4", "~/e.mp4", "007", "NA"]
    csv = write_csv(t / "d.csv", rows)
    want = [str(t / "a.mp4"), str(tmp_path / "up" / "b.mp4"), str(t / "x" / "c.mp4"), "/abs/d.mp4",
            str(tmp_path / "home" / "e.mp4"), str(t / "007"), str(t / "NA")]
    assert list(load_table(csv)) == want
    (tmp_path / "up").mkdir()
    monkeypatch.chdir(tmp_path / "up")
    assert list(load_table(csv)) == want  # whatever the working directory


def test_the_table_keeps_only_paths_in_two_arrays(tmp_path):
    # Other columns are dropped and no row is a Python object (DataLoader workers share the
    # pages of two arrays instead of copying millions of objects as they touch them).
    n = 5000
    rows = [f"clips/{i:05d}.mp4" for i in range(n)]
    csv = write_csv(tmp_path / "d.csv", rows, caption=[f"a long caption number {i} " * 4 for i in range(n)])
    ds = make_dataset(csv, max_retries=RETRIES)
    table = ds.paths
    assert len(ds) == len(table) == n and table[4321] == str(tmp_path / "clips" / "04321.mp4")
    assert table.data.dtype == np.uint8 and table.offsets.dtype == np.int64
    assert table.nbytes == sum(len(r) for r in rows) + 8 * (n + 1)
    assert not table.data.flags.writeable and not table.offsets.flags.writeable
    assert len(pickle.dumps(ds)) < table.nbytes + 10_000  # the dataset holds nothing else per row


def test_dataloader_collates_and_set_epoch_reaches_persistent_workers(tmp_path):
    (tmp_path / "bad.mp4").write_text("x")
    csv = write_csv(tmp_path / "d.csv", [CLIP_100, "bad.mp4", CLIP_100, CLIP_17])
    ds = make_dataset(csv, num_frames=2, image_size=8, seed=1, max_retries=RETRIES)
    loader = build_dataloader(ds, batch_size=2, num_workers=2, timeout_s=120)
    assert loader.persistent_workers and loader.timeout == 120 and not loader.pin_memory
    batches = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        batches[epoch] = list(loader)
    b = batches[0][0]
    assert b["video"].shape == (2, 3, 2, 8, 8) and b["index"].tolist() == [0, 2]
    assert b["path"] == [CLIP_100, CLIP_100] and b["is_image"].tolist() == [False, False]
    assert [os.path.basename(p) for p, _ in b["skipped"]] == ["bad.mp4"]
    for epoch in (0, 1):  # workers produced exactly what the main process computes
        ds.set_epoch(epoch)
        torch.testing.assert_close(batches[epoch][0]["video"][0], ds[0]["video"], rtol=0, atol=0)
    assert not torch.equal(batches[0][0]["video"][0], batches[1][0]["video"][0])


# ----------------------------------------------------------------------------- csv builder


def test_build_csv_scans_sorts_and_reports(tmp_path):
    data = tmp_path / "data"
    (data / "b").mkdir(parents=True)
    (data / "a").mkdir()
    shutil.copy(CLIP_17, data / "b" / "clip 2.MP4")
    shutil.copy(CLIP_17, data / "a" / "clip.mp4")
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(data / "b" / "pic.jpg")
    (data / "a" / "broken.mov").write_text("nope")
    (data / "notes.txt").write_text("ignored")
    out = tmp_path / "out" / "d.csv"
    summary = build_csv(data, out)
    assert (summary.num_videos, summary.num_images) == (2, 1)
    assert [os.path.basename(p) for p, _ in summary.unreadable] == ["broken.mov"]
    table = pd.read_csv(out)
    assert table["path"].tolist() == ["../data/a/clip.mp4", "../data/b/clip 2.MP4", "../data/b/pic.jpg"]
    assert table["num_frames"].tolist() == [17, 17, 1]
    assert table[["height", "width"]].values.tolist() == [[256, 256], [256, 256], [5, 7]]
    assert table["fps"].tolist()[:2] == [24.0, 24.0] and np.isnan(table["fps"][2])
    ds = make_dataset(out, num_frames=17, image_size=8, max_retries=RETRIES)
    assert ds[1]["path"] == str(data / "b" / "clip 2.MP4")

    build_csv(data, tmp_path / "abs.csv", relative=False)
    assert pd.read_csv(tmp_path / "abs.csv")["path"][0] == str(data / "a" / "clip.mp4")


def test_make_csv_script(tmp_path):
    shutil.copy(CLIP_17, tmp_path / "v.mp4")
    result = subprocess.run(
        [sys.executable, str(MAKE_CSV_ENTRY), str(tmp_path), str(tmp_path / "x.csv")],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(tmp_path / "x.csv")["path"].tolist() == ["v.mp4"]


def test_training_and_inference_read_clips_through_one_reader(tmp_path):
    """One `ClipReader`, two windows: the training dataset's random window and inference's
    protocol window give the same pixels where they pick the same frames; each has its own
    "too short" rule and image length."""
    from opensora_vae.data.clips import ClipReader, ProtocolWindow, RandomWindow
    from opensora_vae.inference.dataset import InferenceDataset

    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    csv = write_csv(tmp_path / "d.csv", [CLIP_17, "img.png"])
    train = make_dataset(csv, num_frames=17, image_size=16, max_retries=RETRIES)
    infer = InferenceDataset(csv, num_frames=17, frame_interval=1, image_size=(16, 16), transform_name="center",
                             read_timeout_s=None)
    assert not isinstance(infer, VideoDataset)
    assert isinstance(train.reader, ClipReader) and isinstance(infer.reader, ClipReader)
    assert isinstance(train.reader.window, RandomWindow) and isinstance(infer.reader.window, ProtocolWindow)
    # A 17-frame window over a 17-frame clip can only start at 0: both readers see frames 0..16.
    torch.testing.assert_close(train[0]["video"], infer[0]["video"], rtol=0, atol=0)
    assert train[1]["video"].shape == (3, 17, 16, 16) and infer[1]["video"].shape == (3, 1, 16, 16)
    torch.testing.assert_close(train[1]["video"][:, :1], infer[1]["video"], rtol=0, atol=0)
    reader = ClipReader(T.VideoTransform("center", 16), ProtocolWindow(9, 3))  # frames 0..24: 25 needed
    clip, reason = reader.try_read(CLIP_17)
    assert clip is None and reason == "too short (17 frames < 25 needed for 9 frames at interval 3)"
    clip, reason = ClipReader(T.VideoTransform("center", 16), RandomWindow(9, 2)).try_read(
        CLIP_17, np.random.default_rng(0))
    assert clip is None and reason == "too short (17 < 18)"
    assert ClipReader(T.VideoTransform("center", 16), ProtocolWindow(9, 2)).read(CLIP_17).video.shape[1] == 9


def test_protocol_window_follows_the_protocol_cards_frame_spread():
    from opensora_vae.data.clips import ProtocolWindow, SampleSkipped
    from opensora_vae.metrics.protocol import frame_indices

    assert list(ProtocolWindow(5, 2, "linspace").indices(100)) == frame_indices(5, 2, spread="linspace") == [0, 2, 4, 6, 9]
    assert list(ProtocolWindow(5, 2).indices(100)) == [0, 2, 4, 6, 8]
    with pytest.raises(SampleSkipped, match="too short"):
        ProtocolWindow(5, 2, "linspace").indices(9)
