"""Phone videos and animated GIFs: a display-matrix rotation, variable frame timing, B-frames and
a non-square size. Frames must come out upright, frame i must be the i-th frame shown (whatever
the timestamps), and `VideoFile.info` must report the size the frames come out in."""

import numpy as np
import pytest
from PIL import Image, ImageSequence

from opensora_vae.data.video_io import MediaReadError, VideoFile

from tests.helpers import cut_with_index_in_front, moving_frames, stored_turned_back, write_test_video

NUM = 20  # moving_frames' length
# Milliseconds: 30 fps with a 100 ms stall after every third frame, as phones record in low light.
VFR_PTS = np.cumsum([0] + [100 if i % 3 == 0 else 33 for i in range(NUM - 1)])
PICKS = [17, 3, 3, 10, 19, 6, 0]  # later keyframe intervals, backwards, a repeat, the first


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_vfr_video_reads_upright_in_display_order(tmp_path, rotation):
    upright = moving_frames()
    path = write_test_video(tmp_path / "phone.mp4", stored_turned_back(upright, rotation), pts=VFR_PTS,
                            rotation=rotation, lossless=True, preset="medium", gop=6)
    video = VideoFile(path)
    assert video.num_frames == NUM
    np.testing.assert_array_equal(video.read(range(NUM)), upright)
    np.testing.assert_array_equal(video.read(PICKS), upright[PICKS])
    np.testing.assert_array_equal(VideoFile(path).read(PICKS[:2]), upright[PICKS[:2]])  # a fresh seek
    info = VideoFile(path).info
    assert (info.num_frames, info.height, info.width) == (NUM, *upright.shape[1:3])


def test_lossy_portrait_phone_video(tmp_path):
    # yuv420p with B-frames and rotation -90: the display matrix an iPhone writes for portrait.
    upright = moving_frames()
    path = write_test_video(tmp_path / "portrait.mp4", stored_turned_back(upright, -90), pts=VFR_PTS,
                            rotation=-90, preset="medium", gop=8)
    iphone_portrait_tkhd = bytes.fromhex("00000000" "00010000" "00000000" "ffff0000" "00000000")
    assert iphone_portrait_tkhd in path.read_bytes()  # the test file holds what a phone writes
    frames = VideoFile(path).read(range(NUM)).astype(float)
    assert frames.shape == upright.shape
    assert frames[:, 2:10, 2:8].min() > 200  # the bright block is top-left: upright, not mirrored
    assert np.abs(frames - upright).mean() < 8  # crf 18 yuv420p on 48x64: chroma is halved
    # Each frame read is the frame shown at that position, not a neighbour.
    dist = np.abs(frames[:, None] - upright[None].astype(float)).mean(axis=(2, 3, 4))
    assert (dist.argmin(axis=1) == np.arange(NUM)).all()
    np.testing.assert_array_equal(VideoFile(path).read(PICKS), VideoFile(path).read(range(NUM))[PICKS])


def test_animated_gif_with_varying_frame_delays_reads_every_frame(tmp_path):
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, 16 * 3).astype(np.uint8).tolist()
    images = []
    for _ in range(NUM):
        img = Image.fromarray(rng.integers(0, 16, (48, 64), dtype=np.uint8), mode="P")
        img.putpalette(palette)
        images.append(img)
    path = tmp_path / "anim.gif"
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=[200 if i % 3 == 0 else 40 for i in range(NUM)])
    with Image.open(path) as gif:  # PIL's own decoding of the same file is the oracle
        want = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
    assert len(want) == NUM
    video = VideoFile(path)
    assert video.num_frames == NUM and (video.info.height, video.info.width) == (48, 64)
    np.testing.assert_array_equal(video.read(range(NUM)), want)
    np.testing.assert_array_equal(video.read(PICKS), want[PICKS])


def test_unrotated_square_and_rotated_square_videos_agree(tmp_path):
    # A square video is turned like any other (the previous reader turned squares only with decord).
    upright = moving_frames(48, 48)
    plain = write_test_video(tmp_path / "plain.mp4", upright, lossless=True)
    turned = write_test_video(tmp_path / "turned.mp4", stored_turned_back(upright, 90), rotation=90, lossless=True)
    np.testing.assert_array_equal(VideoFile(plain).read(range(NUM)), VideoFile(turned).read(range(NUM)))


def test_vfr_mkv_without_a_frame_count(tmp_path):
    # Matroska stores no frame count and no full index: the table comes from the packets.
    upright = moving_frames()
    path = write_test_video(tmp_path / "vfr.mkv", upright, pts=VFR_PTS, lossless=True, preset="medium", gop=6)
    video = VideoFile(path)
    assert video.num_frames == NUM
    np.testing.assert_array_equal(video.read(PICKS), upright[PICKS])


def test_truncated_vfr_video_returns_frames_before_the_damage_only(tmp_path):
    upright = moving_frames()
    full = write_test_video(tmp_path / "full.mp4", upright, pts=VFR_PTS, lossless=True, gop=6)
    cut = cut_with_index_in_front(full, tmp_path / "cut.mp4")
    video = VideoFile(cut)
    assert video.num_frames == NUM
    np.testing.assert_array_equal(video.read([0, 2, 5]), upright[[0, 2, 5]])
    for late in ([NUM - 1], [3, NUM - 2]):
        with pytest.raises(MediaReadError):
            VideoFile(cut).read(late)
