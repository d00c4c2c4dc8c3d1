"""Latent export: files, index, stamp, statistics, reader, QA, bad input (through the entry script)."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from opensora_vae.data import LatentDataset
from opensora_vae.inference import LatentStats
from opensora_vae.inference import InferenceDataset
from opensora_vae.export.reader import LatentsMismatchError
from opensora_vae.models import VideoVAEPipeline
from tests.export.helpers import folder_bytes, run_export_entry
from tests.helpers import build_tiny_pipeline


@pytest.fixture(scope="module")
def exported(export_inputs):
    out = export_inputs["root"] / "out"
    assert run_export_entry(export_inputs, out) == 0
    return out


def _clips(inputs, **kw):
    return InferenceDataset(inputs["csv"], whole_video=kw.pop("whole_video", False), num_frames=17, frame_interval=1,
                            image_size=(32, 32), transform_name="center", read_timeout_s=None)


def test_index_rows_and_skips(exported, export_inputs):
    index = pd.read_parquet(exported / "index.parquet")
    assert index["row"].tolist() == list(range(7))
    csv_paths = pd.read_csv(export_inputs["csv"])["path"].tolist()
    assert index["path"].tolist() == csv_paths  # as written in the CSV
    assert index["status"].tolist()[:5] == ["ok"] * 5
    assert index["status"][5] == "file not found" and index["status"][6].startswith("cannot open video")
    assert index["shard"].tolist() == ["000000.safetensors"] * 2 + ["000001.safetensors"] * 2 + \
        ["000002.safetensors"] * 2 + ["000003.safetensors"]
    assert index["frames"].tolist()[:5] == [17, 17, 17, 1, 1]
    assert index["is_image"].tolist()[:5] == [False, False, False, True, True]
    assert [list(s) for s in index["shape"][:5]] == [[4, 5, 4, 4]] * 3 + [[4, 1, 4, 4]] * 2
    assert index["fps"][0] == 24.0 and np.isnan(index["fps"][3])
    # QA every 3rd row (0 and 3 are usable; 6 is skipped)
    assert [not np.isnan(v) for v in index["psnr"]] == [True, False, False, True, False, False, False]
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"] == {
        "rows": 7, "ok": 5, "skipped": 2,
        "skip_reasons": {"file not found": 1, index["status"][6]: 1}}
    assert sorted(p.name for p in (exported / "shards").iterdir()) == [f"{k:06d}.safetensors" for k in range(4)]


def test_latents_equal_the_pipeline_and_stats_are_exact(exported, export_inputs):
    pipe = VideoVAEPipeline.from_pretrained(export_inputs["ckpt"]).eval()
    clips = _clips(export_inputs)
    raw = LatentDataset(exported, normalize=False)
    norm = LatentDataset(exported)
    assert len(raw) == 5
    values = []
    for i in range(5):
        x = clips[i]["video"][None]
        z = pipe.reconstruct(x, rec=False, z=True).z[0]
        assert torch.equal(raw[i]["z"], z.to(torch.bfloat16).float())  # the posterior mode, stored bf16
        assert torch.allclose(norm[i]["z"], (raw[i]["z"] - pipe.shift[0]) / pipe.scale[0])
        values.append(raw[i]["z"].to(torch.float64).flatten(1))
    every = torch.cat(values, dim=1)
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["stats"]["mean"] == pytest.approx(every.mean(1).tolist(), abs=1e-12)
    assert manifest["stats"]["std"] == pytest.approx(every.std(1, unbiased=False).tolist(), abs=1e-12)
    assert len(manifest["stats"]["mean"]) == len(manifest["stats"]["std"]) == 4
    assert manifest["vae"]["shift"] == pipe.shift.flatten().tolist()
    from opensora_vae.weights import sha256_of

    assert manifest["vae"]["weights_sha256"] == sha256_of(export_inputs["ckpt"] / "model.safetensors")
    assert manifest["window"] == {"whole_video": False, "num_frames": 17, "frame_interval": 1,
                                  "image_size": [32, 32], "transform_name": "center"}
    from importlib.metadata import version

    assert manifest["package_version"] == version("opensora_vae")
    # the stored log-variance is the pipeline's own posterior's (clamped), in the storage dtype
    for i in range(5):
        x = clips[i]["video"][None]
        posterior = pipe.encode_temporal(pipe.encode_spatial(x, sample=False))
        assert torch.equal(raw.moments(i)[1], posterior.logvar[0].to(torch.bfloat16))


def test_qa_psnr_is_the_psnr_of_the_stored_mean_decoded(exported, export_inputs):
    """Recomputed here from the stored latents with the pipeline's decoders and skimage's PSNR."""
    from skimage.metrics import peak_signal_noise_ratio

    pipe = VideoVAEPipeline.from_pretrained(export_inputs["ckpt"]).eval()
    clips, raw = _clips(export_inputs), LatentDataset(exported, normalize=False)
    checked = 0
    for i in range(len(raw)):
        if raw[i]["psnr"] is None:
            continue
        x = clips[i]["video"][None]
        with torch.no_grad():
            rec = pipe.spatial_vae.decode(pipe.decode_temporal(raw[i]["z"][None], x.shape[2]))
        to_frames = lambda v: ((v[0].transpose(0, 1).double() + 1) / 2).clamp(0, 1).numpy()  # noqa: E731
        real, fake = to_frames(x), to_frames(rec)
        want = np.mean([peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(real, fake)])
        assert raw[i]["psnr"] == pytest.approx(want, abs=1e-6)
        checked += 1
    assert checked == 2  # rows 0 (a video) and 3 (an image)


def test_reader_item_sampling_and_vae_check(exported, export_inputs, tmp_path):
    ds = LatentDataset(exported)
    item = ds[1]
    assert item["path"] == "/".join(pd.read_csv(export_inputs["csv"])["path"][1:2].tolist())
    assert item["row"] == 1 and item["frames"] == 17
    a, b = LatentDataset(exported, sample=True, seed=3), LatentDataset(exported, sample=True, seed=3)
    assert torch.equal(a[2]["z"], b[2]["z"]) and not torch.equal(a[2]["z"], ds[2]["z"])
    assert not torch.equal(a[2]["z"], LatentDataset(exported, sample=True, seed=4)[2]["z"])
    # the documented draw: mean + exp(logvar / 2) * noise, noise from SeedSequence([seed, row])
    raw = LatentDataset(exported, sample=True, seed=3, normalize=False)
    mean, logvar = (t.float() for t in raw.moments(2))
    state = int(np.random.SeedSequence([3, raw[2]["row"]]).generate_state(1)[0])
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(state))
    torch.testing.assert_close(raw[2]["z"], mean + torch.exp(0.5 * logvar) * noise, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a[2]["z"], (raw[2]["z"] - ds.shift) / ds.scale, rtol=1e-6, atol=1e-6)
    LatentDataset(exported, vae=export_inputs["ckpt"])  # the VAE that made them
    other = tmp_path / "other"
    build_tiny_pipeline(seed=1).save_pretrained(other)
    with pytest.raises(LatentsMismatchError, match="another VAE"):
        LatentDataset(exported, vae=other)
    assert len(LatentDataset(exported, vae=other, allow_other_vae=True)) == 5


def test_reader_refuses_a_shard_of_another_vae(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["vae"]["weights_sha256"] = "f" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LatentsMismatchError, match="another VAE"):
        LatentDataset(copy)[0]
    assert LatentDataset(copy, allow_other_vae=True)[0]["z"].shape == (4, 5, 4, 4)


def test_reader_in_dataloader_workers(exported):
    from opensora_vae.data import PathTable

    ds = LatentDataset(exported)
    # the index lives in a few arrays (nothing per row that forked workers would copy)
    held = {k: type(v) for k, v in vars(ds).items() if k in ("rows", "shards", "frames", "fps", "psnr", "is_image",
                                                             "shapes", "paths")}
    assert held == {**{k: np.ndarray for k in held if k != "paths"}, "paths": PathTable}
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, shuffle=False)
    got = list(loader)
    assert [g["row"] for g in got] == [0, 1, 2, 3, 4]
    assert all(torch.equal(g["z"], ds[i]["z"]) for i, g in enumerate(got))


def test_rerun_of_a_complete_export_changes_nothing(exported, export_inputs):
    before = folder_bytes(exported)
    assert run_export_entry(export_inputs, exported) == 0
    assert folder_bytes(exported) == before


def test_other_checkpoint_or_settings_in_the_folder_are_refused(exported, export_inputs, tmp_path, capsys):
    other = dict(export_inputs, ckpt=tmp_path / "other")
    build_tiny_pipeline(seed=1).save_pretrained(other["ckpt"])
    before = folder_bytes(exported)
    assert run_export_entry(other, exported) == 2
    assert run_export_entry(export_inputs, exported, "export.latent_dtype=fp32") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in err if line.startswith("error")] == ["error", "error"]
    assert "vae.weights_sha256" in err[-2] and "storage.latent_dtype" in err[-1]
    assert folder_bytes(exported) == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert run_export_entry(export_inputs, tmp_path / "busy") == 2
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_missing_checkpoint_and_bad_folder_fail_before_any_output(export_inputs, tmp_path, capsys):
    assert run_export_entry(dict(export_inputs, ckpt=tmp_path / "nope"), tmp_path / "out") == 2
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    assert run_export_entry(export_inputs, tmp_path / "file" / "out") == 2
    err = capsys.readouterr().err
    assert "error: checkpoint" in err and "is a file, not a folder" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("code,message", [(errno.ENOSPC, "no space left on the device"),
                                          (errno.EROFS, "read-only file system")])
def test_disk_full_keeps_nothing_partial_and_the_rerun_completes(exported, export_inputs, tmp_path, monkeypatch,
                                                                 capsys, code, message):
    import safetensors.torch

    real, calls = safetensors.torch.save_file, {"n": 0}

    def full_disk(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)  # a partial file, then the device is full
            raise OSError(code, os.strerror(code))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "out"
    assert run_export_entry(export_inputs, out) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert message in err and "Traceback" not in err and len(errors) == 1 and errors[0].endswith("to continue")
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000000.safetensors"]  # whole shards only
    assert not (out / "index.parquet").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert run_export_entry(export_inputs, out) == 0
    assert folder_bytes(out) == folder_bytes(exported)


def test_whole_video_mode_encodes_every_frame_in_chunks(export_inputs, tmp_path):
    out = tmp_path / "whole"
    assert run_export_entry(export_inputs, out, "export.whole_video=True", "export.qa_every=0") == 0
    pipe = VideoVAEPipeline.from_pretrained(export_inputs["ckpt"]).eval()
    ds = LatentDataset(out, normalize=False)
    item = ds[1]  # the 100-frame clip
    assert item["frames"] == 100 and item["shape"] == [4, pipe.latent_frames(100), 4, 4]
    x = _clips(export_inputs, whole_video=True)[1]["video"][None]
    z = pipe.reconstruct(x, rec=False, z=True).z  # the pipeline's own chunked pass
    assert torch.equal(item["z"], z[0].to(torch.bfloat16).float())


def test_channel_moments_merge_is_exact():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(4, 1000, generator=gen, dtype=torch.float64) * torch.tensor([[1.0], [3.0], [0.1], [10.0]]) + 5
    parts = [LatentStats(4) for _ in range(3)]
    for part, chunk in zip(parts, torch.tensor_split(data, [7, 400], dim=1)):
        part.update(chunk, channel_dim=0)
    merged = LatentStats.merged(parts, 4)
    assert torch.allclose(merged.mean, data.mean(1), atol=1e-12, rtol=0)
    assert torch.allclose(merged.std, data.std(1, unbiased=False), atol=1e-12, rtol=0)
    assert merged.count.tolist() == [1000.0] * 4
