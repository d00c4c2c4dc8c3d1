"""EvalSettings (one validated settings object), score_pair (a clip in memory scored exactly as
the eval scores its files) and the merge of per-pair results (any split, the same numbers)."""

from __future__ import annotations

import numpy as np
import pytest

from opensora_vae.data.video_io import read_video_frames
from opensora_vae.metrics import EvalError, EvalSettings, MetricSuite, evaluate_dirs, score_pair, summarize_results
from opensora_vae.metrics.evaluate import rank_pairs
from tests.helpers import CLIP_17, write_eval_pairs


def test_defaults_are_the_reference_scripts_and_the_device_is_resolved_once():
    s = EvalSettings(device="cpu")
    assert (s.num_frames, s.resolution, s.crop_size, s.batch_size, s.sample_rate) == (100, 336, None, 2, 1)
    assert s.metrics == ("ssim", "psnr", "lpips", "flolpips") and s.protocol == "opensora"
    assert str(s.device) == "cpu" and s.device.type == "cpu"
    assert EvalSettings(metrics=("psnr", "ssim"), device="cpu").metrics == ("ssim", "psnr")  # report order


@pytest.mark.parametrize("changes,match", [
    ({"crop_size": 100}, "multiple of 8"), ({"crop_size": 8}, "SSIM window"),
    ({"crop_size": 64, "resolution": 48}, "larger than the resized short side"),
    ({"resolution": 8}, "SSIM window"), ({"num_frames": 0}, "num_frames"), ({"batch_size": True}, "batch_size"),
    ({"metrics": ("vmaf",)}, "unknown"), ({"metrics": ()}, "no metrics"), ({"protocol": "x"}, "unknown protocol"),
    ({"metrics": ("fvd",), "num_frames": 15}, "num_frames >= 16"), ({"device": "tpu"}, "unknown device"),
    ({"protocol": "styleganv", "num_frames": 17}, "fixes num_frames = 16"), ({"bootstrap": -1}, "bootstrap"),
])
def test_every_rule_is_checked_at_construction(changes, match):
    with pytest.raises(EvalError, match=match):
        EvalSettings(**{"device": "cpu", **changes})


def test_from_cli_takes_the_protocols_defaults_then_the_flags():
    s = EvalSettings.from_cli({"protocol": "styleganv", "device": "cpu"})
    assert (s.num_frames, s.resolution, s.crop_size) == (16, None, None)
    s = EvalSettings.from_cli({"protocol": "styleganv", "device": "cpu", "resolution": 128})
    assert s.resolution == 128
    seed = EvalSettings.from_cli({"batch_size": 2, "device": "cpu", "crop_size": 256, "resolution": 256,
                                  "num_frames": 17, "sample_rate": 1,
                                  "metrics": ("ssim", "psnr", "lpips", "flolpips")})
    assert seed == EvalSettings(num_frames=17, resolution=256, crop_size=256, device="cpu")
    with pytest.raises(EvalError, match="not eval settings"):
        EvalSettings.from_cli({"num_frame": 17})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    clip = read_video_frames(CLIP_17, range(9))[:, 20:100, 30:126]  # 80x96
    clips = {f"v{i}": np.ascontiguousarray(np.roll(clip, 7 * i, axis=2)) for i in range(5)}
    pairs = write_eval_pairs(root, clips, {f"v{i}": 4 + 3 * i for i in range(5)}, real="r", generated="g")
    return root, pairs


def test_score_pair_in_memory_equals_the_eval_of_the_files(folders):
    root, pairs = folders
    settings = EvalSettings(metrics=("ssim", "psnr"), num_frames=9, resolution=64, crop_size=48, device="cpu",
                            batch_size=1, bootstrap=50)
    suite = MetricSuite(settings)
    from_files = evaluate_dirs(root / "r", root / "g", settings, suite=suite, progress=False)
    in_memory = [score_pair(real, fake, settings, suite, name=name, index=i)
                 for i, (name, (real, fake)) in enumerate(pairs.items())]
    merged = summarize_results(in_memory, settings)
    for key in ("ssim", "psnr", "ssim_ci95", "psnr_ci95", "per_frame_index", "per_chunk_position", "worst_videos"):
        assert merged[key] == from_files[key], key
    for r in in_memory:
        assert r.values == from_files["per_video"][r.name]["frames"]


def test_results_merged_from_any_split_equal_one_process(folders):
    """What torchrun ranks do: whole batches round robin, gathered, sorted: bit-identical."""
    _, pairs = folders
    settings = EvalSettings(metrics=("ssim", "psnr"), num_frames=9, resolution=64, device="cpu", batch_size=2)
    suite = MetricSuite(settings)
    items = list(pairs.items())
    whole = [score_pair(*items[i][1], settings, suite, name=items[i][0], index=i) for i in range(len(items))]
    split = rank_pairs(len(items), 2, 1, 2) + rank_pairs(len(items), 2, 0, 2)  # rank 1's first
    assert sorted(split) == list(range(5)) and rank_pairs(5, 2, 0, 2) == [0, 1, 4]
    parts = [whole[i] for i in split]
    assert summarize_results(parts, settings) == summarize_results(whole, settings)
