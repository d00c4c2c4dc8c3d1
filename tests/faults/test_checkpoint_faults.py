"""Poisoned pipeline checkpoints: weights that are NaN/inf or of the wrong kind are refused at
load, by every path that loads them (inference, training's --ckpt-path, from_pretrained), and a
checkpoint whose weights are finite but whose reconstructions are not is counted in the
inference report instead of passing as a bad score."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from opensora_vae.config import load_config
from opensora_vae.inference import run_inference
from opensora_vae.models import CheckpointError, VideoVAEPipeline
from tests.helpers import CLIP_17, INFER_ENTRY, TINY_INFER, TINY_STAGE1, build_tiny_pipeline, run_entry

NAN_KEY = "temporal_vae.encoder.conv_in.conv.weight"
INF_KEY = "spatial_vae.module.decoder.conv_out.bias"
INT_KEY = "temporal_vae.quant_conv.conv.weight"
# The temporal decoder's last conv: huge but finite weights overflow its output (and so the full
# reconstruction) to inf/NaN, while the spatial-only reconstruction never uses it.
OVERFLOW_KEY = "temporal_vae.decoder.conv_out.conv.weight"


def _variant(root, good, name, change) -> object:
    path = root / name
    shutil.copytree(good, path)
    state = load_file(str(good / "model.safetensors"))
    change(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("poisoned")
    good = root / "good"
    build_tiny_pipeline(seed=1).save_pretrained(good)

    def nan(state):
        state[NAN_KEY] = state[NAN_KEY].clone()
        state[NAN_KEY].view(-1)[:3] = float("nan")

    def inf(state):
        state[INF_KEY] = torch.full_like(state[INF_KEY], float("inf"))

    def integer(state):
        state[INT_KEY] = (state[INT_KEY] * 100).round().to(torch.int64)

    def overflow(state):
        state[OVERFLOW_KEY] = torch.full_like(state[OVERFLOW_KEY], 3e38)

    cases = {"good": good}
    for name, change in (("nan", nan), ("inf", inf), ("integer", integer), ("overflow", overflow)):
        cases[name] = _variant(root, good, name, change)
    csv = root / "one.csv"
    csv.write_text(f"path\n{CLIP_17}\n")
    return cases, csv


@pytest.mark.parametrize("case,key", [("nan", NAN_KEY), ("inf", INF_KEY), ("integer", INT_KEY)])
def test_poisoned_weights_are_refused_by_every_loader(ckpts, case, key):
    cases, _ = ckpts
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        VideoVAEPipeline.from_pretrained(cases[case])
    model_cfg = load_config(TINY_STAGE1).model.to_dict()
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):  # training's --ckpt-path
        VideoVAEPipeline.from_train_config(model_cfg, ckpt_path=str(cases[case]))


def test_nan_checkpoint_stops_inference_before_any_output(ckpts, tmp_path):
    cases, csv = ckpts
    save = tmp_path / "s"
    code = run_entry(INFER_ENTRY, [TINY_INFER, "--ckpt-path", cases["nan"], "--data-path", csv,
                                   "--save-dir", save])
    assert code == 2
    assert not list(tmp_path.glob("s_*"))


def _infer(ckpt, csv, save):
    cfg = load_config(TINY_INFER, kind="inference", cfg_options={"lossless": True},
                      cli={"ckpt_path": str(ckpt), "data_path": str(csv), "save_dir": str(save)})
    report = run_inference(cfg, verbose=False)
    assert json.loads(save.with_name(save.name + "_metrics.json").read_text())["num_nonfinite"] == \
        report["num_nonfinite"]
    return report


def test_nonfinite_reconstructions_are_counted_in_the_report(ckpts, tmp_path):
    cases, csv = ckpts
    report = _infer(cases["overflow"], csv, tmp_path / "bad")
    assert report["num_nonfinite"] == 1 and report["num_samples"] == 1
    [entry] = report["nonfinite_samples"]
    assert entry["index"] == 0 and entry["path"] == str(CLIP_17)
    assert entry["rec"] == 3 * 17 * 64 * 64 and entry["spatial"] == 0  # every value of the full rec
    assert report["samples"][0]["nonfinite"] == {"rec": entry["rec"], "spatial": 0}

    clean = _infer(cases["good"], csv, tmp_path / "good")
    assert clean["num_nonfinite"] == 0 and clean["nonfinite_samples"] == []
    assert clean["samples"][0]["nonfinite"] == {"rec": 0, "spatial": 0}
