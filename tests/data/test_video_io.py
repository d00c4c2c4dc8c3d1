"""Video and image reading/writing: pixels, frame indexing, round trips, and honest failures."""

import gc
import os
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from opensora_vae.data import video_io as vio
from opensora_vae.data.video_io import MediaReadError

from tests.helpers import CLIP_17, CLIP_100, cut_with_index_in_front


def sequential_pyav_decode(path: str) -> np.ndarray:
    """Oracle: decode every frame in order, no seeking."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def clip17_frames() -> np.ndarray:
    return sequential_pyav_decode(CLIP_17)


def test_extensions():
    assert vio.is_video("a/B.MP4") and vio.is_video("x.webm") and not vio.is_video("x.png")
    assert vio.is_image("a/b.JPeG") and vio.is_image("c.tiff") and not vio.is_image("c.mkv")
    assert vio.VIDEO_EXTS.isdisjoint(vio.IMAGE_EXTS)


def test_video_info_of_bundled_clips():
    assert vio.video_info(CLIP_17) == vio.VideoInfo(17, 24.0, 256, 256)
    assert vio.video_info(CLIP_100) == vio.VideoInfo(100, 24.0, 405, 720)


def test_indices_give_the_right_frames(clip17_frames):
    indices = [16, 0, 8, 8, 3]
    frames = vio.read_video_frames(CLIP_17, indices)
    assert frames.dtype == np.uint8 and frames.shape == (5, 256, 256, 3)
    np.testing.assert_array_equal(frames, clip17_frames[indices])
    # Consecutive frames of this clip differ, so a wrong index cannot pass by accident.
    assert not np.array_equal(clip17_frames[3], clip17_frames[8])


def test_frames_equal_those_of_the_previous_reader_decord(clip17_frames):
    # decord read these files before; PyAV must give the same pixels, seeking into the middle
    # and end of the long clip (yuv444p, odd height) too.
    decord = pytest.importorskip("decord")
    indices = [0, 41, 42, 43, 77, 99]
    via_decord = decord.VideoReader(str(CLIP_100), num_threads=1).get_batch(indices).asnumpy()
    frames = vio.read_video_frames(CLIP_100, indices)
    np.testing.assert_array_equal(frames, via_decord)
    np.testing.assert_array_equal(frames[1:4], sequential_pyav_decode(CLIP_100)[41:44])
    via_decord = decord.VideoReader(str(CLIP_17), num_threads=1).get_batch(list(range(17))).asnumpy()
    np.testing.assert_array_equal(vio.read_video_frames(CLIP_17, range(17)), via_decord)
    np.testing.assert_array_equal(via_decord, clip17_frames)


def test_out_of_range_indices_raise():
    for bad in ([17], [0, 40], [-1]):
        with pytest.raises(MediaReadError, match="out of range"):
            vio.read_video_frames(CLIP_17, bad)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("size", [(32, 48), (33, 47)])
def test_lossless_write_round_trips_exactly(tmp_path, suffix, size):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, *size, 3), dtype=np.uint8)
    path = str(tmp_path / f"clip{suffix}")
    vio.write_video(path, frames, fps=24, lossless=True)
    assert vio.video_info(path) == vio.VideoInfo(6, 24.0, *size)
    np.testing.assert_array_equal(vio.read_video_frames(path, range(6)), frames)
    np.testing.assert_array_equal(vio.read_video_frames(path, [5, 0, 3]), frames[[5, 0, 3]])
    np.testing.assert_array_equal(sequential_pyav_decode(path), frames)


def test_lossy_write_odd_size_keeps_geometry_and_quality(tmp_path, clip17_frames):
    frames = np.ascontiguousarray(clip17_frames[:5, :131, :97])  # odd height and width
    path = str(tmp_path / "odd.mp4")
    vio.write_video(path, frames, fps=30)
    assert vio.video_info(path) == vio.VideoInfo(5, 30.0, 131, 97)
    decoded = vio.read_video_frames(path, range(5))
    mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 35  # crf 18: close but not lossless


def test_write_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError):
        vio.write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=24)
    with pytest.raises(ValueError):
        vio.write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8), np.uint8), fps=24)
    with pytest.raises(ValueError):
        vio.write_image(tmp_path / "a.png", np.zeros((8, 8, 4), np.uint8))


def test_missing_empty_and_non_video_files_raise(tmp_path):
    with pytest.raises(MediaReadError, match="not found"):
        vio.read_video_frames(tmp_path / "nope.mp4", [0])
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaReadError, match="empty"):
        vio.read_video_frames(tmp_path / "empty.mp4", [0])
    with pytest.raises(MediaReadError, match="empty"):
        vio.video_info(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    with pytest.raises(MediaReadError, match="text.mp4"):
        vio.read_video_frames(tmp_path / "text.mp4", [0])
    with pytest.raises(MediaReadError):
        vio.video_info(tmp_path / "text.mp4")


def test_truncated_video_never_returns_garbage(tmp_path):
    # The bundled mp4 keeps its index (moov) at the end: cut in half, it cannot be opened.
    data = Path(CLIP_100).read_bytes()
    cut = tmp_path / "half.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaReadError, match="half.mp4"):
        vio.read_video_frames(cut, [0])

    # Same stream with the index in front (faststart): the index promises 100 frames but only
    # the first half of the data exists. Early frames must be exact, late ones must raise.
    cut_fs = cut_with_index_in_front(CLIP_100, tmp_path / "faststart_half.mp4")
    full = sequential_pyav_decode(CLIP_100)
    np.testing.assert_array_equal(vio.read_video_frames(cut_fs, [0, 20, 38]), full[[0, 20, 38]])
    for wanted in ([60], [10, 70], [99]):
        with pytest.raises(MediaReadError, match="faststart_half.mp4"):
            vio.read_video_frames(cut_fs, wanted)


# ----------------------------------------------------------------------------- images


def test_image_png_round_trip_exact(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    vio.write_image(tmp_path / "x.png", rgb)
    np.testing.assert_array_equal(vio.read_image(tmp_path / "x.png"), rgb)


def test_gray_image_becomes_three_equal_channels(tmp_path):
    gray = np.array([[0, 10], [128, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = vio.read_image(tmp_path / "g.png")
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=-1))


def test_rgba_and_la_composite_on_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0]], [[200, 100, 50, 128], [0, 0, 0, 255]]],
                    dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = vio.read_image(tmp_path / "a.png").astype(int)
    np.testing.assert_array_equal(out[0, 0], [200, 100, 50])  # opaque: unchanged
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])  # transparent: black
    np.testing.assert_array_equal(out[1, 0], [100, 50, 25])  # half: scaled by 128/255
    la = Image.fromarray(np.array([[[90, 255], [90, 0]]], dtype=np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(vio.read_image(tmp_path / "la.png")[0], [[90] * 3, [0] * 3])


def test_palette_image_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 1
    img.save(tmp_path / "p.png", transparency=1)
    np.testing.assert_array_equal(vio.read_image(tmp_path / "p.png")[0], [[255, 0, 0], [0, 0, 0]])


def test_cmyk_jpeg(tmp_path):
    # With K = 0 the CMYK -> RGB mapping is unambiguous: R = 255 - C, G = 255 - M, B = 255 - Y.
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[..., 0], cmyk[..., 1], cmyk[..., 2] = 100, 0, 200
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", quality=100)
    out = vio.read_image(tmp_path / "c.jpg").astype(int)
    assert np.abs(out - np.array([155, 255, 55])).max() <= 3


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = vio.read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 4, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((2, 4, 3), dtype=np.uint8)
    rgb[0, 0] = 255
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "r.png", exif=exif)
    out = vio.read_image(tmp_path / "r.png")
    assert out.shape == (4, 2, 3) and out[0, 1, 0] == 255


def test_bad_images_raise(tmp_path):
    with pytest.raises(MediaReadError, match="not found"):
        vio.read_image(tmp_path / "missing.png")
    (tmp_path / "t.png").write_text("not an image")
    with pytest.raises(MediaReadError, match="t.png"):
        vio.read_image(tmp_path / "t.png")
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    vio.write_image(tmp_path / "full.jpg", rgb)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaReadError, match="cut.jpg"):
        vio.read_image(tmp_path / "cut.jpg")
    Image.fromarray(np.ones((2, 2), np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(MediaReadError, match="mode F"):
        vio.read_image(tmp_path / "f.tiff")


def test_video_file_opens_once_and_reads_repeatedly(clip17_frames):
    video = vio.VideoFile(CLIP_17)
    assert video.num_frames == 17 and video.info == vio.VideoInfo(17, 24.0, 256, 256)
    np.testing.assert_array_equal(video.read([2, 9]), clip17_frames[[2, 9]])
    np.testing.assert_array_equal(video.read([16]), clip17_frames[[16]])


def test_image_size_reads_the_header_with_exif_orientation(tmp_path):
    img = Image.fromarray(np.zeros((2, 5, 3), dtype=np.uint8))
    img.save(tmp_path / "plain.png")
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert vio.image_size(tmp_path / "plain.png") == (2, 5)
    assert vio.image_size(tmp_path / "rotated.jpg") == (5, 2) == vio.read_image(tmp_path / "rotated.jpg").shape[:2]
    (tmp_path / "x.png").write_text("no")
    with pytest.raises(MediaReadError, match="x.png"):
        vio.image_size(tmp_path / "x.png")


def test_a_video_open_across_a_fork_can_be_freed_in_the_child():
    # DataLoader workers are forked: a VideoFile alive in the parent (a pending exception's
    # traceback keeps one) may be freed in a worker while it decodes. With decoder threads the
    # worker hung there (a fork copies no threads), until the loader's timeout.
    held = vio.VideoFile(CLIP_100)
    held.read([3, 50])
    pid = os.fork()
    if pid == 0:  # the child: read, free the parent's file, exit 0 (anything else: exit 1)
        code = 1
        try:
            vio.VideoFile(CLIP_100).read([10])
            del held
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung freeing a VideoFile opened before the fork")
