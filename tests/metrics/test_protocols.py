"""Named protocols (issue 22): each choice of a protocol card is pinned, the JSON carries the card,
two protocols give different FVD on the same folders; bootstrap intervals; where the
reconstruction fails (per frame index, per chunk position, worst videos)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from opensora_vae.data.video_io import read_video_frames
from opensora_vae.metrics import EvalSettings, evaluate_dirs, summarize_results
from opensora_vae.metrics.evaluate import ClipResult
from opensora_vae.metrics.fvd import clip_length_features, frechet_distance, i3d_features, i3d_weights_path, load_i3d
from opensora_vae.metrics.protocol import (FVD_AVERAGING, FVD_INPUTS, MEANS, PROTOCOL_CARDS, SPREADS, frame_indices,
                                           preprocess)
from opensora_vae.metrics.summary import bootstrap_ci
from tests.helpers import CLIP_17, write_eval_pairs

needs_i3d = pytest.mark.skipif(not i3d_weights_path().is_file(), reason="I3D weights absent")


def test_every_card_states_every_choice():
    fields = {f.name for f in dataclasses.fields(next(iter(PROTOCOL_CARDS.values())))}
    for name, card in PROTOCOL_CARDS.items():
        assert card.name == name and all(getattr(card, f) not in ("", None) for f in fields - {"fixed_why"})
        assert card.frame_spread in SPREADS and card.fvd_input in FVD_INPUTS
        assert card.fvd_averaging in FVD_AVERAGING and card.aggregation in MEANS
    pinned = {name: (c.frame_spread, c.fvd_input, c.fvd_averaging, c.aggregation, c.fvd_min_frames)
              for name, c in PROTOCOL_CARDS.items()}
    assert pinned == {
        "opensora": ("stride", "stretch", "set", "all_pairs", 16),
        "styleganv": ("stride", "stretch", "set", "all_pairs", 16),
        "osp": ("linspace", "short_side_crop", "minibatch_cliplengths", "minibatch_frame", 10),
    }
    assert PROTOCOL_CARDS["styleganv"].fixed == {"num_frames": 16, "sample_rate": 1}
    described = EvalSettings(protocol="osp", device="cpu").describe()
    assert described["name"] == "osp" and described["batch_size"] == 2 and described["num_frames"] == 100
    today = {"metrics", "num_frames", "sample_rate", "frame_indices", "resolution", "resize", "crop_size",
             "pairing", "ssim", "psnr", "lpips", "flolpips", "fvd", "device"}
    assert today <= set(EvalSettings(device="cpu").describe())  # the keys the JSON had before cards


def test_osp_spreads_frames_with_linspace():
    assert frame_indices(4, 2, 100, spread="linspace") == [0, 2, 4, 7]  # np.linspace(0, 7, 4) -> int
    assert frame_indices(4, 2, 100, spread="stride") == [0, 2, 4, 6]
    assert frame_indices(4, 2, 5, spread="linspace") == [0, 4]  # int(5 / 8 * 4) frames over 0..4
    assert frame_indices(5, 1, 3, spread="linspace") == frame_indices(5, 1, 3) == [0, 1, 2]


def _result(index: int, name: str, psnr: list[float], frame_idx: list[int] | None = None) -> ClipResult:
    return ClipResult(index=index, name=name, num_frames=len(psnr),
                      frame_indices=frame_idx or list(range(len(psnr))), values={"psnr": psnr},
                      means={"psnr": float(np.mean(psnr))})


def test_osp_mean_is_over_minibatch_and_frame_index():
    results = [_result(0, "a", [10.0, 20.0]), _result(1, "b", [30.0, 40.0]), _result(2, "c", [50.0, 90.0])]
    base = dict(metrics=("psnr",), device="cpu", bootstrap=0)
    assert summarize_results(results, EvalSettings(**base))["psnr"] == 40.0  # all 6 values
    # batches {a, b}, {c}: frame means 20, 30 | 50, 90 -> mean 47.5
    assert summarize_results(results, EvalSettings(protocol="osp", **base))["psnr"] == 47.5


def test_where_it_fails_per_frame_index_chunk_position_and_worst():
    results = [_result(0, "a", [10.0, 20.0, 30.0], [0, 2, 4]), _result(1, "b", [40.0, 60.0], [0, 2]),
               _result(2, "c", [1.0], [0])]
    out = summarize_results(results, EvalSettings(metrics=("psnr",), device="cpu", bootstrap=0, chunk_frames=4,
                                                  worst_k=2))
    assert out["per_frame_index"]["psnr"] == [(10 + 40 + 1) / 3, 40.0, 30.0]
    # file frame indices 0, 2, 4 -> chunk positions 0, 2, 0 (chunks of 4 frames)
    assert out["per_chunk_position"]["psnr"] == [(10 + 30 + 40 + 1) / 4, None, 40.0, None]
    assert out["worst_videos"]["psnr"] == [{"name": "c", "value": 1.0}, {"name": "a", "value": 20.0}]
    assert out["per_video"]["a"]["frames"] == {"psnr": [10.0, 20.0, 30.0]}
    assert out["per_video"]["a"]["frame_indices"] == [0, 2, 4]


def test_bootstrap_interval_resamples_videos_seeded():
    rng = np.random.default_rng(1)
    results = [_result(i, f"v{i}", list(rng.normal(30 + i, 1, 1 + i % 3))) for i in range(12)]
    settings = EvalSettings(metrics=("psnr",), device="cpu", bootstrap=500, seed=3)
    ci = bootstrap_ci(results, "psnr", settings)
    idx = np.random.default_rng(3).integers(0, 12, size=(500, 12))  # the documented resampling
    sums = np.array([math.fsum(r.values["psnr"]) for r in results])
    counts = np.array([len(r.values["psnr"]) for r in results])
    expected = np.percentile(sums[idx].sum(1) / counts[idx].sum(1), [2.5, 97.5])
    assert ci == [float(expected[0]), float(expected[1])]
    out = summarize_results(results, settings)
    assert out["psnr_ci95"] == ci and ci[0] < out["psnr"] < ci[1]
    assert bootstrap_ci(results, "psnr", settings.replace(seed=4)) != ci
    assert summarize_results(results, settings.replace(bootstrap=0))["psnr_ci95"] is None


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    clip = read_video_frames(CLIP_17, range(17))[:, 30:78, 40:104]  # 48x64, 17 frames
    clips = {f"v{i}": np.ascontiguousarray(np.roll(clip, 11 * i, axis=2)) for i in range(3)}
    videos = write_eval_pairs(root, clips, dict.fromkeys(clips, 12), real="r", generated="g")
    return root, videos


@needs_i3d
def test_protocols_give_different_fvd_and_each_follows_its_card(folders):
    root, videos = folders
    base = dict(metrics=("psnr", "fvd"), device="cpu", bootstrap=20, resolution=32, crop_size=32)
    runs = {name: evaluate_dirs(root / "r", root / "g", EvalSettings.from_cli({"protocol": name, **extra, **base}),
                                progress=False)
            for name, extra in (("opensora", {"num_frames": 17}), ("styleganv", {}), ("osp", {"num_frames": 11}))}
    for name, res in runs.items():
        assert res["protocol"]["name"] == name and res["fvd"] >= 0 and res["fvd_num_videos"] == 3
        assert res["fvd_singular_covariance"] is True and any("singular" in w for w in res["warnings"])
        low, high = res["fvd_ci95"]
        assert low <= high
    # Same frames, same set statistic: opensora's rFVD is StyleGAN-V's; Open-Sora-Plan's differs.
    assert runs["opensora"]["fvd"] == runs["styleganv"]["fvd"]
    assert runs["osp"]["fvd"] > 1.2 * runs["opensora"]["fvd"]
    model, cpu = load_i3d(), torch.device("cpu")
    prep = {k: [preprocess(pair[j][:frames], 32, 32, cpu) for pair in videos.values()]
            for k, j, frames in (("real", 0, 16), ("fake", 1, 16))}
    # opensora and styleganv: one set statistic over the first 16 frames stretched to 224x224.
    set_fvd = frechet_distance(i3d_features(model, prep["real"]), i3d_features(model, prep["fake"]))
    assert runs["styleganv"]["fvd"] == pytest.approx(set_fvd, rel=1e-6)
    assert runs["styleganv"]["per_video"]["v0"]["num_frames"] == 16
    # osp: per mini-batch of 2 (pair order), the mean over clip lengths 10..11 (short side 224, crop).
    feats = {k: [clip_length_features(model, preprocess(pair[j][:11], 32, 32, cpu)).numpy()
                 for pair in videos.values()] for k, j in (("real", 0), ("fake", 1))}
    per_batch = []
    for batch in ([0, 1], [2]):
        per_length = []
        for t in range(2):
            r = np.stack([feats["real"][i][t] for i in batch]).astype(np.float64)
            g = np.stack([feats["fake"][i][t] for i in batch]).astype(np.float64)
            per_length.append(frechet_distance(r, g) if len(batch) > 1 else float(np.sum((r - g).mean(0) ** 2)))
        per_batch.append(np.mean(per_length))
    assert runs["osp"]["fvd"] == pytest.approx(float(np.mean(per_batch)), rel=1e-6)
