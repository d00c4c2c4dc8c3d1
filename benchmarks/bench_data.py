"""Time reading one 17-frame clip from the middle of a long video: our seeking reader vs
decoding the whole video first (what torchvision.io.read_video-style loaders do).

    python benchmarks/bench_data.py [--seconds 62.5] [--repeats 5]

Builds the long video in a temporary folder from the bundled 100-frame clip (centre-cropped
and resized to 256x256, repeated), H.264 crf 18 with libx264's default keyframe interval (250).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import av
import numpy as np

from opensora_vae.data.transforms import center_crop_resize, frames_to_clip
from opensora_vae.data.video_io import VideoFile, _pyav_read, read_video_frames, write_video

SOURCE = "assets/media/city_cc0_0-99.mp4"


def build_long_video(path: str, seconds: float, fps: int = 24) -> int:
    frames = read_video_frames(SOURCE, range(100))
    small = center_crop_resize(frames_to_clip(frames), 256)  # (T, C, 256, 256) in [0, 1]
    small = (small.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).byte().numpy()
    num = int(np.ceil(seconds * fps))
    # Play the clip forwards then backwards so the repetition has no hard cut every 100 frames.
    loop = np.concatenate([small, small[::-1]])
    write_video(path, loop[np.arange(num) % len(loop)], fps=fps)
    return num


def decode_all_then_take(path: str, indices: np.ndarray) -> np.ndarray:
    with av.open(path) as container:
        everything = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return everything[indices]


def median_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=62.5, help="length of the long video at 24 fps")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.mp4")
        start = time.perf_counter()
        total = build_long_video(path, args.seconds)
        print(f"built {total} frames ({total / 24:.1f} s at 24 fps, 256x256, "
              f"{os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
        mid = total // 2 - 8
        indices = np.arange(mid, mid + 17)
        ours, clip = median_time(lambda: read_video_frames(path, indices), args.repeats)
        pyav_seek, clip_pyav = median_time(lambda: _pyav_read(path, indices, None), args.repeats)
        full, clip_full = median_time(lambda: decode_all_then_take(path, indices), max(1, args.repeats // 2))
        open_only, _ = median_time(lambda: VideoFile(path).num_frames, args.repeats)
        assert np.array_equal(clip, clip_full) and np.array_equal(clip_pyav, clip_full), "pixels differ"
        print(f"17 frames from index {mid}: median of {args.repeats} runs")
        print(f"  read_video_frames (decord, seek):   {ours * 1000:8.1f} ms  (of which open/index {open_only * 1000:.1f} ms)")
        print(f"  PyAV fallback path (seek):          {pyav_seek * 1000:8.1f} ms")
        print(f"  PyAV decode all {total} then take 17: {full * 1000:8.1f} ms")
        print(f"  speed-up: decord {full / ours:.1f}x, PyAV seek {full / pyav_seek:.1f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
