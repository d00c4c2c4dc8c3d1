"""Reading and writing videos and images as uint8 RGB numpy arrays.

Videos are read with PyAV (FFmpeg), seeking so that only the frames around the wanted ones are
decoded, upright and in display order (see VideoFile). Images are read with PIL. Every failure to read
media raises :class:`MediaReadError` naming the file and the reason, so callers can skip the
sample instead of crashing or training on garbage.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from ..errors import UserError

VIDEO_EXTS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".gif"}
)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Frames above this many pixels are refused before any decoding (a FrameTooLargeError, which the
# dataset counts as a skip): DCI 8K (8192 x 4320) and everything smaller is read. A sample costs
# about 7 bytes per source pixel (one RGB frame and one float plane, see VideoTransform.from_video)
# plus the decoder's reference frames; an 8192 x 8192 GIF of 50 KB would otherwise cost ~0.5 GB a
# frame, and 2.6 GB as the whole clip at full resolution.
MAX_FRAME_PIXELS = 8192 * 4320

# Default H.264 quality: crf 18 is visually near-lossless, which is what a VAE reconstruction
# or a training clip should be stored at.
DEFAULT_CRF = 18


class MediaReadError(UserError):
    """A video or image could not be read (missing, empty, corrupt, truncated, bad index)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class FrameTooLargeError(MediaReadError):
    """A video whose frames have more than ``limit`` (MAX_FRAME_PIXELS) pixels."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, limit: int):
        self.width, self.height, self.limit = width, height, limit
        super().__init__(path, f"frames are {width}x{height} ({width * height / 1e6:.1f} Mpixels), above the "
                               f"limit of {limit / 1e6:.1f} Mpixels for video frames (MAX_FRAME_PIXELS)")


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

    - Frames are numbered in display order: frame ``i`` is the i-th picture a player shows,
      whatever the timestamps (variable frame rate, B-frames, GIF frame delays). Each decoded
      frame is placed by its timestamp's rank among all frames' timestamps, never by
      ``pts * fps`` (wrong as soon as the frame rate varies).
    - Frames come out upright: a display-matrix rotation (phone videos) is applied, and ``info``
      reports the size the frames come out in.
    - ``read`` seeks to the keyframe before the first wanted frame and decodes forward; only the
      wanted frames are converted to RGB. A file that cannot be opened or decoded raises
      MediaReadError; a truncated one returns the frames before the damage and raises for others.

    The file stays open for the object's life (or until ``close``), so reading twice does not
    index the file twice.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = _check_file(path)
        self._container, self._stream, self._fps = _open_video(self.path)
        self._info: VideoInfo | None = None
        # Display order: pts -> display index, the pts of each index, and where they came from
        # ("index", "packets", or "count" when timestamps cannot place frames: missing or
        # repeated ones; frames are then counted from the start). Built at the first read.
        self._order: dict[int, int] | None = None
        self._pts: list[int] | None = None
        self._order_source: str | None = None
        self._num_frames = self._stream.frames
        codec = self._stream.codec_context
        if self._num_frames <= 0:
            # Containers such as mkv/webm do not store a frame count: count packets (demuxing
            # only, no decoding).
            self._num_frames = self._order_by_packets()
        if self._num_frames <= 0 or codec.width <= 0 or codec.height <= 0:
            self.close()
            raise MediaReadError(self.path, "video has no frames")
        if codec.width * codec.height > MAX_FRAME_PIXELS:
            self.close()
            raise FrameTooLargeError(self.path, codec.width, codec.height, MAX_FRAME_PIXELS)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_frames(self) -> int:
        """Number of frames the container declares (or, without a count, holds packets for). A
        truncated file can have fewer decodable frames: ``read`` checks every frame it returns."""
        return self._num_frames

    @property
    def fps(self) -> float:
        """The stream's average frame rate, from the container (nothing is decoded)."""
        return self._fps

    @property
    def info(self) -> VideoInfo:
        """Frame count, fps and the (upright) size of the frames ``read`` returns."""
        if self._info is None:
            height, width, _ = self.read([0], each=np.shape)[0]
            self._info = VideoInfo(self.num_frames, self._fps, int(height), int(width))
        return self._info

    def read(self, indices: Sequence[int], each: Callable[[np.ndarray], Any] | None = None) -> Any:
        """Decode the frames at ``indices`` (any order, repeats allowed): uint8 (N, H, W, 3) RGB.

        With ``each``, every wanted frame (uint8 (H, W, 3), possibly a read-only view) is passed
        to ``each`` as soon as it is decoded and the results are returned as a list in the order
        of ``indices``: the caller can reduce a frame before the next one is decoded.
        """
        idx = [int(i) for i in indices]
        if not idx:
            raise ValueError("read_video_frames needs at least one frame index")
        bad = [i for i in idx if i < 0 or i >= self.num_frames]
        if bad:
            raise MediaReadError(
                self.path, f"frame index out of range: {bad[:5]} (video has {self.num_frames} frames)"
            )
        got = self._decode(sorted(set(idx)), each or (lambda frame: frame))
        if each is not None:
            return [got[i] for i in idx]
        return np.stack([got[i] for i in idx]).astype(np.uint8, copy=False)

    # -- decoding

    def _decode(self, wanted: list[int], each: Callable[[np.ndarray], Any]) -> dict[int, Any]:
        """``{index: each(frame)}`` for every wanted (sorted, unique) index, or MediaReadError."""
        if self._order_source is None:
            self._order_by_index()
        while True:
            by_pts = self._order_source != "count"
            # Frames past the end of the table (a truncated file) are never placed: missing.
            seek = self._pts[min(wanted[0], len(self._pts) - 1)] if by_pts else None
            outcome, got, decoded, error = self._decode_from(seek, by_pts, wanted, each)
            if outcome == "overshoot":  # the seek landed after the first wanted frame
                outcome, got, decoded, error = self._decode_from(None, by_pts, wanted, each)
            if outcome != "unplaced":
                break
            # A frame whose timestamp is not in the table: a table made from the container index
            # is replaced by the packets' own timestamps, and failing those, frames are counted.
            if self._order_source == "index":
                self._order_by_packets()
            else:
                self._set_order(None, "count")
        missing = [i for i in wanted if i not in got]
        if missing:
            detail = f"; decoder error: {type(error).__name__}: {error}" if error is not None else ""
            raise MediaReadError(
                self.path,
                f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be decoded "
                f"(only {decoded} decodable frames found{detail})",
            )
        return got

    def _decode_from(self, seek: int | None, by_pts: bool, wanted: list[int], each: Callable) -> tuple:
        """Decode forward from the keyframe before pts ``seek`` (None: from the first frame).
        Returns (outcome, {index: each(frame)}, frames decoded, decoder error); the outcome is
        "done", "overshoot" or "unplaced" (a frame whose timestamp the table does not hold)."""
        if seek is None:
            self._reopen()
        else:
            try:
                self._container.seek(seek, stream=self._stream, backward=True, any_frame=False)
            except Exception:
                return "overshoot", {}, 0, None
        wanted_set, last = set(wanted), wanted[-1]
        got: dict[int, Any] = {}
        decoded = count = 0
        frames = self._container.decode(self._stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as exc:  # corrupt/truncated data: keep what decoded cleanly
                _raise_if_out_of_memory(self.path, exc)
                return "done", got, decoded, exc
            if by_pts:
                i = self._order.get(frame.pts)
                if i is None:
                    return "unplaced", got, decoded, None
            else:
                i = count
            if count == 0 and seek is not None and i > wanted[0]:
                return "overshoot", got, decoded, None
            count += 1
            decoded = max(decoded, i + 1)
            if i in wanted_set and i not in got:
                try:
                    got[i] = each(_upright_rgb(frame))
                except MemoryError as exc:
                    _raise_if_out_of_memory(self.path, exc)
            if i >= last:
                break
        return "done", got, decoded, None

    # -- display order

    def _order_by_index(self) -> None:
        """The table from the container index alone (mp4/mov: no reading), when it proves a
        constant frame rate: one decode timestamp per declared frame, evenly spaced, so the
        display timestamps are ``start + k * step``. Otherwise from the packets."""
        entries, n = self._stream.index_entries, self._num_frames
        start = self._stream.start_time
        if start is not None and n > 1 and len(entries) == n:
            dts = [e.timestamp for e in entries if not e.is_discard]
            steps = set(np.diff(dts).tolist()) if len(dts) == n else set()
            if len(steps) == 1 and (step := steps.pop()) > 0:
                self._set_order([start + k * step for k in range(n)], "index")
                return
        self._order_by_packets()

    def _order_by_packets(self) -> int:
        """The table from every packet's timestamp (demuxing the file, no decoding): display
        index = rank of the packet's pts. Returns the number of packets."""
        self._reopen()
        pts: list[int | None] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size > 0 and not packet.is_discard:
                    pts.append(packet.pts)
        except Exception as exc:  # truncated: the packets before the damage
            _raise_if_out_of_memory(self.path, exc)
        usable = None not in pts and len(set(pts)) == len(pts)
        self._set_order(sorted(pts) if usable else None, "packets")
        return len(pts)

    def _set_order(self, pts: list[int] | None, source: str) -> None:
        self._pts = pts or None
        self._order = None if not pts else {p: i for i, p in enumerate(pts)}
        self._order_source = source if pts else "count"

    def _reopen(self) -> None:
        """Back to the first packet: reopening is the one start position every format supports."""
        self.close()
        self._container, self._stream, _ = _open_video(self.path)


def _raise_if_out_of_memory(path: str, exc: BaseException) -> None:
    """Running out of memory is the machine's state, not the file's: never report it as an
    unreadable file (which the dataset would skip), raise MemoryError naming the file."""
    if isinstance(exc, MemoryError):
        raise MemoryError(f"{path}: out of memory while reading the video ({exc})") from exc


def _upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """uint8 (H, W, 3) RGB turned as the display matrix says (a view when it turns)."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = round(frame.rotation / 90) % 4  # counter-clockwise, as np.rot90 turns
    return np.rot90(rgb, quarter_turns) if quarter_turns else rgb


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps and (upright) frame size of a video."""
    with VideoFile(path) as video:
        return video.info


def read_video_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) as uint8 (N, H, W, 3) RGB."""
    with VideoFile(path) as video:
        return video.read(indices)


def _open_video(path: str) -> tuple[av.container.InputContainer, av.video.VideoStream, float]:
    """(container, its first video stream, fps) or MediaReadError; the caller closes the container."""
    try:
        container = av.open(path)
    except Exception as exc:
        _raise_if_out_of_memory(path, exc)
        raise MediaReadError(path, f"cannot open video ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise MediaReadError(path, "no video stream")
    stream = container.streams.video[0]
    # One decoding thread: a VideoFile alive when a DataLoader forks its workers must not own
    # decoder threads (freeing it in a worker would wait on threads the fork did not copy), and
    # workers are the parallelism. H.264 from x264 has one slice a frame: slice threads gained nothing.
    stream.codec_context.thread_count = 1
    return container, stream, float(stream.average_rate or stream.guessed_rate or 0.0)


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
