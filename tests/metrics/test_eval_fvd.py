"""`eval_common_metric.py --metric ... fvd`: features from the same single decode pass as the
other metrics, equal to `frechet_distance` of `load_i3d` features of the protocol's frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from opensora_vae.data.video_io import read_video_frames, write_video
from opensora_vae.metrics.fvd import frechet_distance, i3d_features, i3d_weights_path, load_i3d
from opensora_vae.metrics.protocol import preprocess
from tests.helpers import CLIP_17, EVAL_ENTRY, run_entry

pytestmark = pytest.mark.skipif(not i3d_weights_path().is_file(),
                                reason="I3D weights absent: run `python tools/install_weights.py`")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fvd_eval")
    frames = read_video_frames(CLIP_17, range(17))
    rng = np.random.default_rng(0)
    real, gen = {}, {}
    for i, (y, x) in enumerate([(0, 0), (40, 90), (120, 30)]):
        clip = np.ascontiguousarray(frames[:, y:y + 96, x:x + 96])
        noisy = np.clip(clip.astype(np.float64) + rng.normal(0, 12, clip.shape), 0, 255).astype(np.uint8)
        real[f"v{i}"], gen[f"v{i}"] = clip, noisy
        for folder, video in (("real", clip), ("gen", noisy)):
            (root / folder).mkdir(exist_ok=True)
            write_video(root / folder / f"v{i}.mp4", video, 24, lossless=True)
    return root, real, gen


def test_cli_fvd_equals_frechet_distance_of_i3d_features(folders, capsys):
    root, real, gen = folders
    code = run_entry(EVAL_ENTRY, ["--real_video_dir", root / "real", "--generated_video_dir", root / "gen",
                                  "--num_frames", 16, "--resolution", 64, "--crop_size", 64, "--device", "cpu",
                                  "--metric", "psnr", "fvd", "--res_dir", root / "res", "--no_progress"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((root / "res" / "metric_16f_64res.json").read_text())
    assert saved["fvd_num_videos"] == 3 and saved["psnr"] is not None
    assert any("256" in w for w in saved["warnings"])  # few videos: biased, warned
    model = load_i3d()
    cpu = torch.device("cpu")
    feats = {k: i3d_features(model, [preprocess(v[name][:16], 64, 64, cpu) for name in sorted(v)])
             for k, v in (("real", real), ("gen", gen))}
    assert saved["fvd"] == pytest.approx(frechet_distance(feats["real"], feats["gen"]), rel=1e-6, abs=1e-6)
    assert saved["fvd"] > 0


def test_fvd_with_fewer_than_16_frames_is_refused_before_work(folders, capsys):
    root, _, _ = folders
    code = run_entry(EVAL_ENTRY, ["--real_video_dir", root / "real", "--generated_video_dir", root / "gen",
                                  "--num_frames", 8, "--resolution", 64, "--device", "cpu", "--metric", "fvd",
                                  "--res_dir", root / "res8", "--no_progress"])
    assert code == 2 and "--num_frames >= 16" in capsys.readouterr().err
    assert not (root / "res8").exists()
