"""eval/vae/eval_common_metric.py end to end on two small folders of lossless videos."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from opensora_vae.data.video_io import read_video_frames
from opensora_vae.lpips import find_backbone
from opensora_vae.metrics import LPIPSMetric, psnr, ssim
from opensora_vae.metrics.pwcnet import PWC_WEIGHTS_ENV
from opensora_vae.metrics.protocol import preprocess
from tests.helpers import CLIP_17, EVAL_ENTRY, write_eval_pairs

SCRIPT = EVAL_ENTRY


def _load_cli():
    spec = importlib.util.spec_from_file_location("eval_common_metric", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    clip = read_video_frames(CLIP_17, range(5))[:, 100:172, 60:156]  # 72x96
    pairs = write_eval_pairs(root, {"clip1": clip, "clip2": clip}, {"clip1": 6, "clip2": 20})
    fakes = {name: fake for name, (_, fake) in pairs.items()}
    return root, clip, fakes


def test_cli_writes_json_equal_to_direct_metric_calls(folders, capsys):
    root, clip, fakes = folders
    metrics = ["ssim", "psnr"] + (["lpips"] if find_backbone("alex") is not None else [])
    cli = _load_cli()
    code = cli.main(["--real_video_dir", str(root / "real"), "--generated_video_dir", str(root / "gen"),
                       "--num_frames", "4", "--sample_rate", "1", "--resolution", "64", "--crop_size", "56",
                       "--device", "cpu", "--batch_size", "1", "--sample_fps", "24", "--metric", *metrics,
                       "--res_dir", str(root / "out"), "--no_progress"])
    out = capsys.readouterr().out
    assert "psnr" in out and "2 pair(s) evaluated" in out
    saved = json.loads((root / "out" / "metric_4f_64res.json").read_text())
    assert code == 0
    assert set(saved) >= set(metrics) | {"per_video", "protocol", "num_videos", "skipped"}
    assert saved["num_videos"] == 2 and saved["protocol"]["crop_size"] == 56

    cpu = torch.device("cpu")
    real = preprocess(clip[:4], 64, 56, cpu)
    direct = {m: [] for m in metrics}
    lpips_metric = LPIPSMetric() if "lpips" in metrics else None
    for name, fake_frames in fakes.items():
        fake = preprocess(fake_frames[:4], 64, 56, cpu)
        assert fake.shape == (4, 3, 56, 56)
        values = {"ssim": ssim(real, fake), "psnr": psnr(real, fake)}
        if lpips_metric is not None:
            values["lpips"] = lpips_metric(real, fake)
        for metric in metrics:
            assert saved["per_video"][name][metric] == pytest.approx(values[metric].double().mean().item(), rel=1e-6)
            direct[metric] += values[metric].tolist()
    for metric in metrics:
        assert saved[metric] == pytest.approx(np.mean(direct[metric]), rel=1e-6)


def test_cli_subset_and_clear_errors(folders, tmp_path, monkeypatch, capsys):
    root, _, _ = folders
    cli = _load_cli()
    base = ["--real_video_dir", str(root / "real"), "--generated_video_dir", str(root / "gen"),
            "--num_frames", "2", "--resolution", "64", "--no_progress"]
    assert cli.main(base + ["--metric", "psnr", "--subset_size", "1", "--device", "cpu",
                            "--res_dir", str(tmp_path / "sub")]) == 0
    res = json.loads((tmp_path / "sub" / "metric_2f_64res.json").read_text())
    assert list(res["per_video"]) == ["clip1"]
    monkeypatch.setenv(PWC_WEIGHTS_ENV, str(tmp_path / "missing.pytorch"))
    with pytest.raises(FileNotFoundError, match="network-default.pytorch"):
        cli.main(base + ["--metric", "flolpips", "--device", "cpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            cli.main(base + ["--metric", "psnr", "--device", "cuda"])
    with pytest.raises(SystemExit):
        cli.main(base + ["--metric", "vmaf"])  # not a metric of this eval
