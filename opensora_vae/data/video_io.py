"""Reading and writing videos and images as uint8 RGB numpy arrays.

Videos are read with decord (seeking, so only the wanted frames are decoded) and fall back to
PyAV when decord cannot open or decode a file. Images are read with PIL. Every failure to read
media raises :class:`MediaReadError` naming the file and the reason, so callers can skip the
sample instead of crashing or training on garbage.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from ..errors import UserError

VIDEO_EXTS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}
)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Default H.264 quality: crf 18 is visually near-lossless, which is what a VAE reconstruction
# or a training clip should be stored at.
DEFAULT_CRF = 18


class MediaReadError(UserError):
    """A video or image could not be read (missing, empty, corrupt, truncated, bad index)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NotARegularFileError(MediaReadError):
    """A media path that exists but is a directory, FIFO, device or socket (``file_type``)."""

    def __init__(self, path: str | os.PathLike, file_type: str):
        self.file_type = file_type
        super().__init__(path, f"is a {file_type}, not a regular file")


# What a non-regular path is, for the error message; checked before any open (a FIFO would block).
_FILE_TYPES = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _ext(path: str | os.PathLike) -> str:
    return os.path.splitext(str(path))[1].lower()


def is_image(path: str | os.PathLike) -> bool:
    return _ext(path) in IMAGE_EXTS


def is_video(path: str | os.PathLike) -> bool:
    return _ext(path) in VIDEO_EXTS


def _check_file(path: str | os.PathLike) -> str:
    path = str(path)
    try:
        mode = os.stat(path)
    except FileNotFoundError:
        raise MediaReadError(path, "file not found") from None
    except OSError as exc:
        raise MediaReadError(path, f"cannot access ({exc.strerror})") from exc
    if not stat.S_ISREG(mode.st_mode):
        kind = next((name for is_kind, name in _FILE_TYPES if is_kind(mode.st_mode)), "special file")
        raise NotARegularFileError(path, kind)
    if mode.st_size == 0:
        raise MediaReadError(path, "file is empty (0 bytes)")
    return path


# ----------------------------------------------------------------------------- video reading


class VideoFile:
    """An opened video: ``num_frames``, ``info`` and ``read(indices)``.

    Opening once and reading from the same object avoids indexing the file twice (decord
    demuxes every packet when it opens a file). decord is used when it can open the file;
    PyAV reads what decord cannot open or decode.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = _check_file(path)
        self._decord_error: Exception | None = None
        self._info: VideoInfo | None = None
        try:
            # Imported lazily: decord is optional at runtime, PyAV alone can read everything.
            from decord import VideoReader, cpu

            self._vr = VideoReader(self.path, ctx=cpu(0), num_threads=1)
            if len(self._vr) == 0:
                raise RuntimeError("decord found no frames")
        except Exception as exc:  # any decord failure: PyAV decides whether the file is readable
            self._vr, self._decord_error = None, exc
            self._info = _pyav_info(self.path)

    @property
    def num_frames(self) -> int:
        """Number of video packets in the file. A truncated file can have fewer decodable
        frames: ``read`` checks every frame it returns."""
        return len(self._vr) if self._vr is not None else self.info.num_frames

    @property
    def info(self) -> VideoInfo:
        if self._info is None:
            try:
                height, width = self._vr[0].shape[:2]  # decord exposes the size only via a frame
            except Exception:
                return _pyav_info(self.path)
            self._info = VideoInfo(
                len(self._vr), float(self._vr.get_avg_fps()), int(height), int(width)
            )
        return self._info

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the frames at ``indices`` (any order, repeats allowed): uint8 (N, H, W, 3) RGB."""
        idx = [int(i) for i in indices]
        if not idx:
            raise ValueError("read_video_frames needs at least one frame index")
        bad = [i for i in idx if i < 0 or i >= self.num_frames]
        if bad:
            raise MediaReadError(
                self.path, f"frame index out of range: {bad[:5]} (video has {self.num_frames} frames)"
            )
        if self._vr is not None:
            try:
                frames = self._vr.get_batch(idx).asnumpy()
                # decord counts packets, not decodable frames: insist on every frame.
                if frames.ndim == 4 and frames.shape[0] == len(idx) and frames.shape[-1] == 3:
                    return np.ascontiguousarray(frames, dtype=np.uint8)
                self._decord_error = RuntimeError(f"decord returned shape {frames.shape}")
            except Exception as exc:
                # Truncated or corrupt streams: decord gives up on the whole batch even when
                # some frames are decodable; PyAV decodes up to the damage and reports honestly.
                self._decord_error = exc
        return _pyav_read(self.path, idx, self._decord_error)


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count (packets in the file), fps and size of a video."""
    return VideoFile(path).info


def read_video_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) as uint8 (N, H, W, 3) RGB."""
    return VideoFile(path).read(indices)


def _open_video(path: str, why: str = "") -> tuple[av.container.InputContainer, av.video.VideoStream, float]:
    """(container, its first video stream, fps) or MediaReadError; the caller closes the container."""
    try:
        container = av.open(path)
    except Exception as exc:
        raise MediaReadError(path, f"cannot open video{why} ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise MediaReadError(path, "no video stream")
    stream = container.streams.video[0]
    return container, stream, float(stream.average_rate or stream.guessed_rate or 0.0)


def _pyav_info(path: str) -> VideoInfo:
    container, stream, fps = _open_video(path)
    with container:
        try:
            num_frames = stream.frames
            if num_frames <= 0:
                # Containers such as mkv/webm do not store a frame count: count packets
                # (demuxing only, no decoding).
                num_frames = sum(1 for p in container.demux(stream) if p.size > 0)
        except Exception as exc:
            raise MediaReadError(path, f"cannot open video ({type(exc).__name__}: {exc})") from exc
        height, width = stream.codec_context.height, stream.codec_context.width
    if num_frames <= 0 or height <= 0 or width <= 0:
        raise MediaReadError(path, "video has no frames")
    return VideoInfo(int(num_frames), fps, int(height), int(width))


def _pyav_read(path: str, idx: list[int], decord_error: Exception | None) -> np.ndarray:
    """The frames at ``idx`` (validated by the caller) by seeking with PyAV."""
    why = f" (decord: {type(decord_error).__name__})" if decord_error is not None else ""
    container, stream, fps = _open_video(path, why)
    with container:
        time_base = stream.time_base
        start = stream.start_time or 0
        wanted = set(idx)
        first, last = min(wanted), max(wanted)
        use_pts = fps > 0 and time_base is not None
        got: dict[int, np.ndarray] = {}
        decoded = 0
        error: Exception | None = None

        def decode_from(seek_to_first: bool) -> int | None:
            """Decode forward; returns the index of the first decoded frame."""
            nonlocal decoded, error
            if seek_to_first:
                target = start + int(first / fps / time_base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            else:
                container.seek(start, stream=stream, backward=True, any_frame=False)
            first_seen = None
            count = 0
            try:
                for frame in container.decode(stream):
                    if use_pts and frame.pts is not None:
                        i = int(round(float((frame.pts - start) * time_base) * fps))
                    elif seek_to_first:
                        return None  # no timestamps: cannot locate frames after a seek
                    else:
                        i = count  # no timestamps: count frames from the start
                    count += 1
                    if first_seen is None:
                        first_seen = i
                        if seek_to_first and i > first:
                            return i  # seek overshot the wanted range
                    decoded = max(decoded, i + 1)
                    if i in wanted:
                        got[i] = frame.to_ndarray(format="rgb24")
                    if i >= last:
                        break
            except Exception as exc:  # corrupt/truncated data: keep what decoded cleanly
                error = exc
            return first_seen

        try:
            first_seen = decode_from(seek_to_first=use_pts and first > 0)
            if use_pts and first > 0 and (first_seen is None or first_seen > first):
                got.clear()
                error = None
                decode_from(seek_to_first=False)
        except Exception as exc:
            raise MediaReadError(path, f"cannot decode{why}: {type(exc).__name__}: {exc}") from exc

    missing = sorted(wanted - got.keys())
    if missing:
        detail = f"; decoder error: {type(error).__name__}: {error}" if error is not None else ""
        raise MediaReadError(
            path,
            f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be decoded "
            f"(only {decoded} decodable frames found{why}{detail})",
        )
    return np.stack([got[i] for i in idx]).astype(np.uint8, copy=False)


# ----------------------------------------------------------------------------- images


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    # Full-range rescale 0..65535 -> 0..255 with rounding (v / 257), not clipping at 255.
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb(img: Image.Image, path: str) -> np.ndarray:
    """Convert any common PIL mode to RGB uint8. Transparency is composited on black
    (rgb * alpha), so fully transparent pixels become black whatever colour they stored."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise MediaReadError(path, f"integer image mode {mode} with values outside 0..65535")
        gray = _sixteen_bit_to_uint8(arr)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        raise MediaReadError(path, "float image (mode F): value range is ambiguous")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode in ("1", "L", "CMYK", "YCbCr", "RGBX"):
        img = img.convert("RGB")
    if img.mode == "RGBA":
        rgba = np.asarray(img).astype(np.uint32)
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    if img.mode != "RGB":
        raise MediaReadError(path, f"unsupported image mode {img.mode}")
    return np.asarray(img, dtype=np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as uint8 (H, W, 3) RGB, applying its EXIF orientation."""
    path = _check_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img, path)
    except MediaReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MediaReadError(path, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    return np.ascontiguousarray(rgb)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) as ``read_image`` would return it, from the header only (cheap)."""
    path = _check_file(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            # EXIF orientations 5-8 are rotations by 90 degrees: displayed size is transposed.
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MediaReadError(path, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    return height, width


# ----------------------------------------------------------------------------- writing


def _check_frames(frames: np.ndarray, ndim: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != ndim or frames.shape[-1] != 3:
        want = "(T, H, W, 3)" if ndim == 4 else "(H, W, 3)"
        raise ValueError(f"expected uint8 {want} RGB, got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: float, lossless: bool = False
) -> None:
    """Write uint8 (T, H, W, 3) RGB frames.

    Lossy (default): H.264 crf 18, yuv420p; when width or height is odd (yuv420p needs even
    sizes) yuv444p is used instead, which keeps the exact geometry and decodes everywhere
    FFmpeg runs (some browsers cannot play 4:4:4). Lossless: FFV1 (bgr0) for ``.mkv``,
    otherwise libx264rgb with qp 0 — both decode back bit-exactly to the input RGB.
    """
    frames = _check_frames(frames, 4)
    if frames.shape[0] == 0:
        raise ValueError("write_video needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = str(path)
    _, height, width, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    if lossless and _ext(path) == ".mkv":
        codec, pix_fmt, options = "ffv1", "bgr0", {}
    elif lossless:
        codec, pix_fmt, options = "libx264rgb", "rgb24", {"qp": "0", "preset": "medium"}
    else:
        even = width % 2 == 0 and height % 2 == 0
        codec, pix_fmt = "libx264", "yuv420p" if even else "yuv444p"
        options = {"crf": str(DEFAULT_CRF), "preset": "medium"}
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_image(path: str | os.PathLike, frame: np.ndarray) -> None:
    """Write one uint8 (H, W, 3) RGB frame; the format follows the extension (JPEG quality 95)."""
    frame = _check_frames(frame, 3)
    options = {"quality": 95} if _ext(path) in (".jpg", ".jpeg") else {}
    Image.fromarray(frame).save(str(path), **options)
