"""The eval frame protocol: frame indices, preprocessing, pairing files by name."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opensora_vae.data.video_io import read_video_frames, write_video
from opensora_vae.metrics.protocol import frame_indices, pair_files, preprocess
from tests.helpers import CLIP_17


def _folders(tmp_path, names):
    frames = read_video_frames(CLIP_17, range(2))[:, :64, :64]
    real, gen = tmp_path / "real", tmp_path / "gen"
    real.mkdir(), gen.mkdir()
    for name in names:
        write_video(real / f"{name}.mp4", frames, 24, lossless=True)
        write_video(gen / f"{name}.mkv", frames, 24, lossless=True)
    return real, gen, frames


def test_frame_indices_and_preprocess():
    assert frame_indices(4, 3, 100) == [0, 3, 6, 9]
    assert frame_indices(4, 3, 8) == [0, 3, 6]
    assert frame_indices(4, 3) == [0, 3, 6, 9]  # inference: all of them (it skips short videos)
    with pytest.raises(ValueError):
        frame_indices(0, 1, 10)
    frames = np.random.default_rng(0).integers(0, 256, (2, 80, 96, 3), dtype=np.uint8)
    out = preprocess(frames, resolution=64, crop_size=48, device=torch.device("cpu"))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    resized = F.interpolate(x, size=(64, math.floor(96 / 80 * 64)), mode="bilinear", align_corners=False)
    assert resized.shape[-1] == 76
    assert torch.equal(out, resized[..., 8:56, 14:62])  # round((64-48)/2), round((76-48)/2)
    assert torch.equal(preprocess(frames, None, None, torch.device("cpu")), x)
    with pytest.raises(ValueError, match="crop_size"):
        preprocess(frames, 64, 70, torch.device("cpu"))


def test_pairing_by_name_errors(tmp_path):
    real_dir, gen_dir, clip = _folders(tmp_path, names=("a", "b"))
    assert [(p.name, p.real.name, p.generated.name) for p in pair_files(real_dir, gen_dir)] == [
        ("a", "a.mp4", "a.mkv"), ("b", "b.mp4", "b.mkv")]
    (gen_dir / "b.mkv").rename(gen_dir / "z.mkv")
    with pytest.raises(ValueError) as err:
        pair_files(real_dir, gen_dir)
    assert "missing in" in str(err.value) and "b" in str(err.value) and "z" in str(err.value)
    write_video(gen_dir / "a.mp4", clip[:2], 24, lossless=True)  # a.mkv and a.mp4
    with pytest.raises(ValueError, match="same name"):
        pair_files(real_dir, gen_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not media")
    with pytest.raises(ValueError, match="no video or image files"):
        pair_files(real_dir, empty)


def test_inference_takes_its_clips_with_the_eval_protocol():
    """InferenceDataset reads with a ProtocolWindow (tests/data/test_dataset.py), which takes these frames."""
    from opensora_vae.data.clips import ProtocolWindow

    for num_frames, stride in ((17, 1), (9, 3), (1, 5)):
        assert list(ProtocolWindow(num_frames, stride).indices(1000)) == frame_indices(num_frames, stride)
