"""A sample read at the output size: `VideoTransform.from_video` reduces each frame to the
output size as soon as it is decoded (memory: one source frame, not the clip). Its result must
be today's full-resolution result, `transform(frames_to_clip(read(indices)))`, exactly
(tolerance 0: the same float operations, done frame by frame and plane by plane). Frames above
the pixel ceiling are refused before decoding; running out of memory is never a bad file."""

import av
import numpy as np
import pytest
import torch

from opensora_vae.data import video_io as vio
from opensora_vae.data.transforms import TRANSFORM_NAMES, VideoTransform, frames_to_clip
from opensora_vae.data.video_io import FrameTooLargeError, MediaReadError, VideoFile, read_video_frames

from tests.helpers import CLIP_17, CLIP_100, make_dataset, moving_frames, stored_turned_back, write_test_video

CASES = [(CLIP_17, list(range(17))), (CLIP_100, [3, 10, 26, 10])]  # 256x256, 720x405 (odd height)
SIZES = [256, (32, 48), (300, 161)]  # square, wide, taller than the source (an upscale) and odd


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_from_video_equals_the_full_resolution_transform_exactly(name):
    for path, indices in CASES:
        full = frames_to_clip(read_video_frames(path, indices))
        for size in SIZES:
            transform = VideoTransform(name, size)
            got = transform.from_video(VideoFile(path), indices)
            assert torch.equal(got, transform(full)), (path.name, size)


def test_from_video_of_a_rotated_video_transforms_the_upright_frames(tmp_path):
    upright = moving_frames()
    path = write_test_video(tmp_path / "phone.mp4", stored_turned_back(upright, -90), rotation=-90, lossless=True)
    transform = VideoTransform("center", (24, 16))
    assert torch.equal(transform.from_video(VideoFile(path), [4, 0, 19]), transform(frames_to_clip(upright[[4, 0, 19]])))


def test_read_each_gets_every_wanted_frame_once_and_returns_them_in_request_order():
    seen = []

    def reduce(frame):
        seen.append(frame.shape)
        return float(frame.mean())

    got = VideoFile(CLIP_100).read([41, 3, 41, 0], each=reduce)
    full = read_video_frames(CLIP_100, [41, 3, 41, 0]).mean(axis=(1, 2, 3))
    assert seen == [(405, 720, 3)] * 3  # three distinct frames, each reduced once
    np.testing.assert_allclose(got, full)


def test_frames_above_the_pixel_ceiling_are_refused_before_decoding(tmp_path, monkeypatch):
    path = write_test_video(tmp_path / "clip.mp4", moving_frames(48, 64, num=3))
    monkeypatch.setattr(vio, "MAX_FRAME_PIXELS", 64 * 48)
    assert VideoFile(path).read([2]).shape == (1, 48, 64, 3)  # at the ceiling: read
    monkeypatch.setattr(vio, "MAX_FRAME_PIXELS", 64 * 48 - 1)
    with pytest.raises(FrameTooLargeError) as err:
        VideoFile(path)
    assert (err.value.width, err.value.height, err.value.limit) == (64, 48, 64 * 48 - 1)
    assert isinstance(err.value, MediaReadError)  # a counted skip in the dataset


def test_out_of_memory_while_decoding_is_raised_as_memory_error_not_a_bad_file(tmp_path, monkeypatch):
    def out_of_memory(frame):
        raise av.error.MemoryError(12, "Cannot allocate memory")

    monkeypatch.setattr(vio, "_upright_rgb", out_of_memory)
    with pytest.raises(MemoryError) as err:
        VideoFile(CLIP_17).read([0, 1])
    assert not isinstance(err.value, MediaReadError) and str(CLIP_17) in str(err.value)
    # The dataset does not count it as an unreadable sample and move on: it is not the file's fault.
    csv = tmp_path / "d.csv"
    csv.write_text(f"path\n{CLIP_17}\n{CLIP_17}\n")
    with pytest.raises(MemoryError):
        make_dataset(csv, num_frames=17, image_size=(16, 16), max_retries=20)[0]


def test_the_transform_does_not_depend_on_the_thread_count():
    """torch's batched bilinear kernel rounds differently with one thread than with several (1 ulp):
    a clip, a frame read plane by plane and an image must get the same pixels under
    OMP_NUM_THREADS=1 (which this project recommends on small machines) as under the default."""
    path, indices = CASES[1]
    full = frames_to_clip(read_video_frames(path, indices))
    before = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name in TRANSFORM_NAMES:
                transform = VideoTransform(name, (300, 161))
                results[threads, name] = transform(full)
                assert torch.equal(transform.from_video(VideoFile(path), indices), results[threads, name]), name
    finally:
        torch.set_num_threads(before)
    for name in TRANSFORM_NAMES:
        assert torch.equal(results[1, name], results[2, name]), name
