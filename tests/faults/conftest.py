"""Shared pieces of the fault suite: a folder of bad and awkward media, CSV writers, and
subprocess runners that kill every process of a run when it hangs or when a test preempts it,
and fail the test if any process outlives its run."""

from __future__ import annotations

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

import av
import numpy as np
import pytest
from PIL import Image

from tests.helpers import (CLIP_17, EVAL_ENTRY, INFER_ENTRY, REPO, TINY_INFER, TINY_STAGE1,  # noqa: F401
                           TRAIN_ENTRY, load_script)
# Small and deterministic: 32x32 clips of the tiny model train at ~0.15 s/step on this CPU.
FAST_TRAIN_OPTIONS = ["dataset.image_size=[32,32]", "deterministic=True", "log_every=1"]
CHILD_ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


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
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env={**(env or CHILD_ENV), RUN_TOKEN: token},
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


def _write_h264(path: Path, frames: np.ndarray, faststart: bool = False) -> None:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "18"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p" if frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 else "yuv444p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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
    _write_h264(folder / "one_frame.mp4", small[:1])
    _write_h264(folder / "odd_size.mp4", np.ascontiguousarray(frames[:, 5:52, 9:42]))  # 47x33
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
    _write_h264(folder / "short.mp4", small[:5])
    unusable["short.mp4"] = (folder / "short.mp4", "too short (5 < 17)")
    # Cut mid-stream with the index in front: the container promises 34 frames, the first ~12
    # decode, so every 17-frame window hits the damage.
    _write_h264(folder / "full.mp4", np.concatenate([small, small[::-1]]), faststart=True)
    data = (folder / "full.mp4").read_bytes()
    (folder / "full.mp4").unlink()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    unusable["truncated.mp4"] = (folder / "truncated.mp4", "could not be decoded")
    # Cut mid-stream with the index at the end (the default): nothing can be opened.
    data = CLIP_17.read_bytes()
    (folder / "truncated_index.mp4").write_bytes(data[: len(data) // 2])
    unusable["truncated_index.mp4"] = (folder / "truncated_index.mp4", "cannot open video")
    return BadMedia(folder, usable, unusable)


@pytest.fixture(scope="session")
def bad_media(tmp_path_factory) -> BadMedia:
    return make_bad_media(tmp_path_factory.mktemp("bad_media"))


# ----------------------------------------------------------------------------- checkpoints


def make_broken_checkpoints(root: Path) -> dict[str, Path]:
    """save_pretrained dirs of the tiny pipeline, damaged in different ways (names say how)."""
    from tests.helpers import build_tiny_pipeline

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


@pytest.fixture(scope="session")
def broken_checkpoints(tmp_path_factory) -> dict[str, Path]:
    return make_broken_checkpoints(tmp_path_factory.mktemp("ckpts"))
