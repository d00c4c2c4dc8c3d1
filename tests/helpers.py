"""What many tests share: repository paths, the bundled clips, tiny configs and pipelines, media
CSVs, and loading an entry script as a module. Fixtures live in conftest.py; this holds plain
functions and constants so any test file (or subprocess worker) can import them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TEST_ASSETS = REPO / "tests" / "assets"
MEDIA = REPO / "assets" / "media"
CLIP_17 = MEDIA / "city_cc0_256_17f.mp4"  # 17 frames, 256x256
CLIP_100 = MEDIA / "city_cc0_0-99.mp4"  # 100 frames of the source clip

TRAIN_ENTRY = REPO / "scripts" / "train_vae.py"
INFER_ENTRY = REPO / "scripts" / "inference_vae.py"
EVAL_ENTRY = REPO / "eval" / "vae" / "eval_common_metric.py"
MAKE_CSV_ENTRY = REPO / "scripts" / "make_csv.py"
TINY_TRAIN = {k: REPO / "configs" / "vae" / "train" / "tiny" / f"stage{k}.py" for k in (1, 2, 3)}
TINY_STAGE1 = TINY_TRAIN[1]
TINY_INFER = REPO / "configs" / "vae" / "inference" / "tiny.py"


def load_script(path: Path):
    """An entry script as a module: its `main(argv)` runs in this process, which is cheap for the
    errors that come before any work."""
    spec = importlib.util.spec_from_file_location(f"entry_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_entry(path: Path, argv) -> int:
    """Runs an entry script's `main(argv)` in this process through the shared CLI runner and
    returns the exit status it would end with."""
    from opensora_vae.cli import run_main

    return run_main(load_script(path).main, [str(a) for a in argv])


def build_tiny_pipeline(seed: int = 0, **model_overrides):
    """The tiny-config pipeline with deterministic random weights."""
    from opensora_vae.config import load_config
    from opensora_vae.models import VideoVAEPipeline

    cfg = load_config(TINY_STAGE1)
    model_cfg = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
    model_cfg.update(model_overrides)
    torch.manual_seed(seed)
    return VideoVAEPipeline.from_train_config(model_cfg)


def make_dataset(data_path, **overrides):
    """`VideoDataset.from_config` with the defaults of configs/vae/_base_/default_train.py (the
    schema: the dataset has none of its own) and ``overrides`` of its ``dataset`` keys or ``seed``."""
    from mmengine.config import Config

    from opensora_vae.data import VideoDataset

    base = Config.fromfile(str(REPO / "configs" / "vae" / "_base_" / "default_train.py"))
    seed = overrides.pop("seed", base.seed)
    dataset = {**base.dataset.to_dict(), "data_path": str(data_path), **overrides}
    return VideoDataset.from_config(dataset, seed)


def make_media_csv(folder: Path, num_images: int = 2, videos=(CLIP_17,), extra_rows=()) -> Path:
    """A CSV with the bundled clip(s) and PNG images cut from its frames (relative paths)."""
    from opensora_vae.data import read_video_frames, write_image

    folder.mkdir(parents=True, exist_ok=True)
    rows = [str(REPO / v) for v in videos]
    if num_images:
        frames = read_video_frames(CLIP_17, np.linspace(0, 16, num_images).astype(int).tolist())
        for i, frame in enumerate(frames):
            write_image(folder / f"frame{i}.png", frame)
            rows.append(f"frame{i}.png")
    rows += list(extra_rows)
    csv = folder / "data.csv"
    csv.write_text("path\n" + "\n".join(rows) + "\n")
    return csv


def tiny_train_cfg(stage: int, outputs: Path, data_path: Path, **options):
    """The tiny stage config at 32x32 with the given overrides (`dataset__num_frames` → dataset.num_frames)."""
    from opensora_vae.config import load_config

    opts = {"dataset.image_size": [32, 32], "log_every": 1}
    opts.update({k.replace("__", "."): v for k, v in options.items()})
    return load_config(TINY_TRAIN[stage], cfg_options=opts,
                       cli={"outputs": str(outputs), "data_path": str(data_path)})


def write_test_video(path: Path, frames: np.ndarray, pts=None, rotation: int = 0, lossless: bool = False,
                     fps: int = 30, preset: str = "ultrafast", gop: int | None = None) -> Path:
    """Encode uint8 (T, H, W, 3) frames as H.264 with test-only features: explicit frame timestamps
    `pts` (in 1/1000 s; irregular ones make a variable-frame-rate file), a display-matrix
    `rotation` (degrees counter-clockwise, FFmpeg's convention: a player shows the stored frames
    turned by it) and a keyframe every `gop` frames. Lossless (libx264rgb qp 0) round-trips
    exactly; otherwise yuv420p. Presets from "medium" on use B-frames, as phones do."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        codec, options = ("libx264rgb", {"qp": "0"}) if lossless else ("libx264", {"crf": "18"})
        stream = container.add_stream(codec, rate=fps, options={**options, "preset": preset})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if pts is not None:
                video_frame.pts, video_frame.time_base = int(pts[i]), Fraction(1, 1000)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def moving_frames(height: int = 64, width: int = 48, num: int = 20) -> np.ndarray:
    """Upright (portrait, non-square) frames of a smooth pattern moving 3 px per frame, with a
    bright block in the top-left corner, so frames and orientations are all different."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(num):
        r = 128 + 100 * np.sin((x + 3 * i) / 5.0)
        g = 128 + 100 * np.cos((y - 2 * i) / 7.0)
        b = 128 + 60 * np.sin((x + y + 4 * i) / 9.0)
        frame = np.stack([r, g, b], axis=-1)
        frame[:12, :10] = 250
        frames.append(frame)
    return np.clip(np.stack(frames), 0, 255).round().astype(np.uint8)


def stored_turned_back(upright: np.ndarray, rotation: int) -> np.ndarray:
    """What a phone stores: the upright picture turned clockwise by `rotation` (a player turns it
    back counter-clockwise by the display matrix's `rotation`)."""
    return np.ascontiguousarray(np.rot90(upright, -rotation // 90, axes=(1, 2)))


def cut_with_index_in_front(source: Path, out: Path, keep: float = 0.5) -> Path:
    """`source`'s video stream remuxed with its index in front (mp4 faststart), then cut to the
    first `keep` of its bytes: the index promises every frame, only the first ones have data."""
    import av

    whole = out.with_name(out.stem + "_whole.mp4")
    with av.open(str(source)) as src, av.open(str(whole), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = whole.read_bytes()
    whole.unlink()
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def write_eval_pairs(root: Path, clips: dict, noise: dict | None = None, seed: int = 0,
                     real: str = "real", generated: str = "gen") -> dict:
    """Eval folders `root/real`, `root/gen`: each named uint8 (T, H, W, 3) clip written losslessly,
    its reconstruction the clip plus uniform integer noise of ±`noise[name]` (default 6). Returns
    {name: (real frames, generated frames)}."""
    from opensora_vae.data.video_io import write_video

    rng = np.random.default_rng(seed)
    (root / real).mkdir(parents=True, exist_ok=True), (root / generated).mkdir(parents=True, exist_ok=True)
    pairs = {}
    for name, clip in clips.items():
        amount = (noise or {}).get(name, 6)
        fake = np.clip(clip.astype(int) + rng.integers(-amount, amount + 1, clip.shape), 0, 255).astype(np.uint8)
        write_video(root / real / f"{name}.mp4", clip, 24, lossless=True)
        write_video(root / generated / f"{name}.mp4", fake, 24, lossless=True)
        pairs[name] = (clip, fake)
    return pairs
