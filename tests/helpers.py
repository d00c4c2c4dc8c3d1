"""What many tests share: repository paths, the bundled clips, tiny configs and pipelines, media
CSVs and test videos, loading an entry script as a module, the environment of a child process,
subprocess runners that kill every process of a run when it hangs, and bad media and damaged
checkpoints for the fault tests. Fixtures live in the conftest.py files; this holds plain functions
and constants so any test file (or subprocess worker) can import them."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
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
    exactly; otherwise yuv420p (yuv444p for an odd width or height, which 4:2:0 cannot hold).
    Presets from "medium" on use B-frames, as phones do."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        codec, options = ("libx264rgb", {"qp": "0"}) if lossless else ("libx264", {"crf": "18"})
        stream = container.add_stream(codec, rate=fps, options={**options, "preset": preset})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        odd = frames.shape[1] % 2 or frames.shape[2] % 2
        stream.pix_fmt = "rgb24" if lossless else "yuv444p" if odd else "yuv420p"
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


# Small and deterministic: 32x32 clips of the tiny model train at ~0.15 s/step on this CPU.
FAST_TRAIN_OPTIONS = ["dataset.image_size=[32,32]", "deterministic=True", "log_every=1"]


def child_env(**extra: str) -> dict:
    """The environment of every process a test starts: this checkout first on the import path (so a
    child imports the code under test, wherever pytest was started), one OpenMP thread that does not
    spin when idle (several children share the CPU) and no Hugging Face hub; `extra` on top."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", **extra}


# ----------------------------------------------------------------------------- processes
# Every child gets a unique token in its environment. torchrun starts each rank in a session of
# its own, so a process group does not hold a whole run; the token finds every process of a run
# (launcher, ranks, DataLoader workers) wherever it sits in the tree.
RUN_TOKEN = "OPENSORA_VAE_FAULT_RUN"


@dataclass
class Finished:
    code: int
    out: str  # stdout and stderr, interleaved
    seconds: float


def run_pids(token: str, *also: str) -> list[int]:
    """Live processes whose environment holds `RUN_TOKEN=token` and every `also` entry (e.g.
    "RANK=1", which torchrun sets for a rank and its DataLoader workers). Zombies have none."""
    needles = {f"{RUN_TOKEN}={token}".encode(), *(a.encode() for a in also)}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needles <= set((entry / "environ").read_bytes().split(b"\0")):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def kill_run(proc: subprocess.Popen, *also: str) -> list[int]:
    """SIGKILL every process of the run at once, as a preempted node would lose them (only
    those whose environment also holds the `also` entries, e.g. "RANK=1": one rank)."""
    pids = run_pids(proc.token, *also)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def start(cmd: list, env: dict | None = None) -> subprocess.Popen:
    token = uuid.uuid4().hex
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env={**(env or child_env()), RUN_TOKEN: token},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    proc.token, proc.started = token, time.monotonic()
    return proc


def assert_nothing_left(proc: subprocess.Popen, out: str, grace: float = 15.0) -> None:
    """No process of the run may outlive it (a DataLoader worker or rank that does is a bug)."""
    deadline = time.monotonic() + grace
    while run_pids(proc.token) and time.monotonic() < deadline:
        time.sleep(0.2)
    stray = kill_run(proc)
    assert not stray, f"processes {stray} of {proc.args[:4]} outlived it by {grace} s:\n{out[-4000:]}"


def finish(proc: subprocess.Popen, timeout: float) -> Finished:
    """Waits for `proc`; on timeout kills the whole run and fails the test."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_run(proc)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args[:4]}... hung: killed after {timeout} s\n{out[-4000:]}")
    seconds = time.monotonic() - proc.started
    assert_nothing_left(proc, out)
    return Finished(proc.returncode, out, seconds)


def run(cmd: list, timeout: float = 180, env: dict | None = None) -> Finished:
    proc = start(cmd, env)
    try:
        return finish(proc, timeout)
    finally:
        kill_run(proc)


def run_and_kill_when(cmd: list, trigger, timeout: float = 180, env: dict | None = None,
                      only: tuple[str, ...] = ()) -> tuple[Finished, str | None]:
    """Runs `cmd` and SIGKILLs all of its processes (those matching `only`, see `kill_run`)
    right after the first output line for which `trigger(line)` is true. Returns (result, that
    line, or None when the run ended first); the run must then end by itself within `timeout`."""
    proc = start(cmd, env)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen, fired = [], None
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.01, timeout - (time.monotonic() - proc.started)))
            except queue.Empty:
                kill_run(proc)
                pytest.fail(f"{proc.args[:4]}... hung: killed after {timeout} s\n{''.join(seen)[-4000:]}")
            if line is None:
                break
            seen.append(line)
            if fired is None and trigger(line):
                fired = line
                assert kill_run(proc, *only), f"no process of the run matches {only}"
        proc.wait(timeout=60)
        out = "".join(seen)
        assert_nothing_left(proc, out)
        return Finished(proc.returncode, out, time.monotonic() - proc.started), fired
    finally:
        kill_run(proc)


def train_cmd(csv: Path, outputs: Path, *options: str) -> list:
    """`python scripts/train_vae.py` with the tiny stage-1 config at 32x32 and `options`."""
    return [sys.executable, TRAIN_ENTRY, TINY_STAGE1, "--data-path", csv, "--outputs", outputs,
            "--cfg-options", *FAST_TRAIN_OPTIONS, *options]


def torchrun_cmd(nproc: int, script: Path, *args) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            script, *args]


# ----------------------------------------------------------------------------- media


def write_csv(path: Path, rows: list, column: str = "path") -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({column: [str(r) for r in rows]}).to_csv(path, index=False)
    return path


@dataclass
class BadMedia:
    """`usable`: name → path of inputs that must be converted and used; `unusable`: name →
    (path, a fragment of the skip reason). Names are file names (unique in the folder)."""
    folder: Path
    usable: dict
    unusable: dict

    def rows(self) -> list[Path]:
        return [*self.usable.values(), *(p for p, _ in self.unusable.values())]


def make_bad_media(folder: Path) -> BadMedia:
    from PIL import Image

    from opensora_vae.data import read_video_frames

    folder.mkdir(parents=True, exist_ok=True)
    frames = read_video_frames(CLIP_17, range(17))  # 256x256
    small = np.ascontiguousarray(frames[:, ::4, ::4])  # 64x64
    rng = np.random.default_rng(0)
    usable, unusable = {}, {}

    gray = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(folder / "gray.png")
    rgba = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    cmyk = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16)).save(folder / "gray16.png")
    write_test_video(folder / "one_frame.mp4", small[:1], fps=24, preset="medium")
    write_test_video(folder / "odd_size.mp4", np.ascontiguousarray(frames[:, 5:52, 9:42]), fps=24,
                     preset="medium")  # 47x33
    spaced = folder / "my clips é 日本"
    spaced.mkdir(exist_ok=True)
    shutil.copy(CLIP_17, spaced / "vidéo 1 ü.mp4")
    for name in ("gray.png", "rgba.png", "cmyk.jpg", "gray16.png", "one_frame.mp4", "odd_size.mp4"):
        usable[name] = folder / name
    usable["vidéo 1 ü.mp4"] = spaced / "vidéo 1 ü.mp4"

    (folder / "zero.mp4").write_bytes(b"")
    unusable["zero.mp4"] = (folder / "zero.mp4", "file is empty")
    (folder / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    unusable["text.mp4"] = (folder / "text.mp4", "cannot open video")
    unusable["missing.mp4"] = (folder / "missing.mp4", "file not found")
    write_test_video(folder / "short.mp4", small[:5], fps=24, preset="medium")
    unusable["short.mp4"] = (folder / "short.mp4", "too short (5 < 17)")
    # Cut mid-stream with the index in front: the container promises 34 frames, the first ~12
    # decode, so every 17-frame window hits the damage.
    full = write_test_video(folder / "full.mp4", np.concatenate([small, small[::-1]]), fps=24, preset="medium")
    cut_with_index_in_front(full, folder / "truncated.mp4", keep=1 / 3)
    full.unlink()
    unusable["truncated.mp4"] = (folder / "truncated.mp4", "could not be decoded")
    # Cut mid-stream with the index at the end (the default): nothing can be opened.
    data = CLIP_17.read_bytes()
    (folder / "truncated_index.mp4").write_bytes(data[: len(data) // 2])
    unusable["truncated_index.mp4"] = (folder / "truncated_index.mp4", "cannot open video")
    return BadMedia(folder, usable, unusable)


# ----------------------------------------------------------------------------- checkpoints


def make_broken_checkpoints(root: Path) -> dict[str, Path]:
    """save_pretrained dirs of the tiny pipeline, damaged in different ways (names say how)."""
    good = root / "good"
    build_tiny_pipeline(seed=1).save_pretrained(good)
    config = json.loads((good / "config.json").read_text())
    damaged = {
        "truncated": None, "garbage_config": "{this is not json", "config_not_an_object": "[1, 2, 3]",
        # Parses, but a size is a string: the code building the model must not crash on it.
        "config_wrong_type": json.dumps({**config, "vae_temporal": {**config["vae_temporal"], "filters": "many"}}),
        # Parses and builds, but describes twice the temporal filters the weights have.
        "config_other_arch": json.dumps({**config, "vae_temporal": {**config["vae_temporal"], "filters": 32}}),
    }
    cases = {"good": good, "missing": root / "does_not_exist"}
    for name, config_text in damaged.items():
        cases[name] = root / name
        shutil.copytree(good, cases[name])
        if config_text is not None:
            (cases[name] / "config.json").write_text(config_text)
    weights = (good / "model.safetensors").read_bytes()
    (cases["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    # A consistent checkpoint of another architecture (fine for inference, not for the tiny
    # training config).
    cases["other_arch"] = root / "other_arch"
    build_tiny_pipeline(seed=1, temporal=dict(filters=32, num_res_blocks=1, num_groups=8)).save_pretrained(
        cases["other_arch"])
    return cases


# ----------------------------------------------------------------------------- training state
def assert_same_state(a, b, path: str = "state") -> None:
    """Two checkpoint states are equal: every tensor bit for bit, every other value ==; `path`
    names the first difference."""
    import torch

    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


class Value:
    """The smallest stateful checkpoint entry: its state is its value."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return self.value

    def load_state_dict(self, state):
        self.value = state


def checkpoint_manager(outputs: Path, keep_last: int | None, pipe, **entries):
    """A `CheckpointManager` over the least a checkpoint holds (the model and the step counter)
    plus `entries`, without a Trainer."""
    from opensora_vae.training.checkpoint import CheckpointManager
    from opensora_vae.training.states import ModelState

    return CheckpointManager(outputs, keep_last, states={"model": ModelState(pipe, fsdp=False),
                                                         "counters": Value({"global_step": 0}), **entries})


def save_step(manager, step: int, cfg) -> Path:
    """Saves `manager`'s states as step `step` (its counter says so, as the trainer's would)."""
    manager.states["counters"].value = {"global_step": step}
    return manager.save(step, cfg)


def step_dirs(folder: Path) -> list[str]:
    """The names of the checkpoint folders in `folder`, oldest first."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step_"))
