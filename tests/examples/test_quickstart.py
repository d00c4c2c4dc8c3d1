"""Quickstart demo parts (examples/quickstart/): the sample-data builder, stage 0, the
pretrained-spatial start, and the result readers.

The whole demo (minutes of training) is run by `bash scripts/quickstart.sh`, not here.
"""

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import CLIP_100, REPO, TINY_TRAIN, build_tiny_pipeline
from opensora_vae.data.video_io import read_image, read_video_frames, video_info
from examples.quickstart.results import format_results_table, loss_trend, read_tensorboard_scalars, ResultRow
from examples.quickstart.sample_data import build_sample_data, crop_windows, resize_short_side, window_starts
from examples.quickstart.stage0 import load_frames, run_stage0, spatial_psnr, train_spatial_vae

SOURCE = CLIP_100


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    # Two small scales (2 + 6 windows of 64 px) keep it fast; clips are lossless, so pixels compare exactly.
    return build_sample_data(tmp_path_factory.mktemp("sample"), clip_size=64, scales=(64, 96),
                             train_frames=80, stills_per_source=2)


def test_window_starts_cover_the_side_evenly():
    assert window_starts(64, 64) == [0]
    assert window_starts(114, 64) == [0, 50]
    assert window_starts(171, 64) == [0, 54, 107]
    starts = window_starts(228, 64)
    assert starts[0] == 0 and starts[-1] == 228 - 64 and len(starts) == 4
    with pytest.raises(ValueError, match="larger"):
        window_starts(50, 64)
    assert crop_windows(96, 171, 64) == [(y, x) for y in (0, 32) for x in (0, 54, 107)]


def test_resize_short_side_keeps_aspect():
    frames = np.zeros((2, 405, 720, 3), np.uint8)
    assert resize_short_side(frames, 64).shape == (2, 64, 114, 3)
    assert resize_short_side(frames.transpose(0, 2, 1, 3), 96).shape == (2, 171, 96, 3)


def test_sample_csvs_split_in_time(sample):
    train, heldout = pd.read_csv(sample.train_csv), pd.read_csv(sample.heldout_csv)
    # scales 64 (1x2 windows) and 96 (2x3 windows): 8 clips each, plus 2 stills per source
    assert sample.num_train_videos == 8 and sample.num_heldout_videos == 8
    assert sample.num_train_images == 4 and len(train) == 12 and len(heldout) == 8
    videos = train[train.num_frames > 1]
    assert (videos.num_frames == 80).all() and (heldout.num_frames == 20).all()
    assert (train.height == 64).all() and (train.width == 64).all()
    assert train.fps.isna().sum() == 4  # stills have no fps
    # same windows in both splits, so each held-out clip continues a training clip
    names = lambda t: sorted(p.rsplit("/", 1)[1] for p in t.path if p.endswith(".mp4"))  # noqa: E731
    assert names(videos) == names(heldout)
    assert {p.rsplit(".", 1)[1] for p in train.path if "stills" in p} == {"png", "jpg"}
    assert sample.train_frame_range == (0, 80) and sample.heldout_frame_range == (80, 100)


def test_sample_clips_are_the_source_pixels(sample):
    """The s64 x000 window = the source resized to short side 64, columns 0..63; the held-out clip
    holds source frames 80.. (lossless, so exact)."""
    source = read_video_frames(SOURCE, [0, 79, 80, 99])
    expect = resize_short_side(source, 64)[:, :, :64]
    train = read_video_frames(sample.root / "train" / "s64_y000_x000.mp4", [0, 79])
    held = read_video_frames(sample.root / "heldout" / "s64_y000_x000.mp4", [0, 19])
    assert np.array_equal(train, expect[:2]) and np.array_equal(held, expect[2:])
    assert video_info(sample.root / "heldout" / "s64_y000_x000.mp4").num_frames == 20


def test_stills_come_from_training_frames(sample):
    stills = sorted((sample.root / "train" / "stills").iterdir())
    assert [p.name for p in stills] == ["city_cc0_0-99_f000.png", "city_cc0_0-99_f079.png",
                                        "city_cc0_256_17f_f000.jpg", "city_cc0_256_17f_f016.jpg"]
    png = read_image(stills[1])
    frame = read_video_frames(SOURCE, [79])
    centre = frame[:, :, (720 - 405) // 2:(720 - 405) // 2 + 405]
    assert np.array_equal(png, resize_short_side(centre, 64)[0])


def test_sample_builder_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        build_sample_data(tmp_path / "a", train_frames=100)
    with pytest.raises(ValueError, match="clip_size"):
        build_sample_data(tmp_path / "b", clip_size=96, scales=(64,))


def test_load_frames_reads_every_frame_and_image(sample):
    frames = load_frames(sample.train_csv, frames_per_video=5)
    assert frames.shape == (8 * 5 + 4, 3, 64, 64)
    assert frames.min() >= -1 and frames.max() <= 1
    first = read_video_frames(sample.root / "train" / "s64_y000_x000.mp4", [0])[0]
    assert torch.allclose(frames[0], torch.from_numpy(first).permute(2, 0, 1).float() / 127.5 - 1)


def test_spatial_psnr_matches_definition():
    """A VAE stand-in whose reconstruction is x + 0.1 (in [-1, 1]) -> error 0.05 in [0, 1]: 26.02 dB."""

    class Dist:
        def __init__(self, x):
            self.x = x

        def mode(self):
            return self.x

    class Shift(torch.nn.Module):
        def encode(self, x):
            return type("Out", (), {"latent_dist": Dist(x)})

        def decode(self, z):
            return type("Out", (), {"sample": z + 0.1})

    frames = torch.rand(3, 3, 8, 8) * 1.6 - 0.8  # no clamping at the edges
    assert spatial_psnr(Shift(), frames) == pytest.approx(20 * math.log10(1 / 0.05), abs=1e-4)  # float32 frames


def test_stage0_loss_falls_and_checkpoint_loads_in_stage1(sample, tmp_path):
    from opensora_vae.config import load_config
    from opensora_vae.models import VideoVAEPipeline

    cfg = load_config(REPO / "configs/vae/train/tiny/stage1.py").model.to_dict()
    result = run_stage0(cfg, sample.train_csv, sample.heldout_csv, tmp_path / "s0", steps=30, batch_size=4,
                        lr=2e-3, frames_per_video=4, progress=False)
    assert len(result.losses) == 30
    # TensorBoard like the training stages: the loss curve and held-out previews before and after.
    tb = tmp_path / "s0" / "tensorboard"
    assert read_tensorboard_scalars(tb)["loss/loss"] == [(i + 1, pytest.approx(v)) for i, v in enumerate(result.losses)]
    assert [v for _, v in read_tensorboard_scalars(tb, prefix="heldout/")["heldout/psnr"]] == pytest.approx(
        [result.heldout_psnr_before, result.heldout_psnr], abs=1e-4)
    assert _tensorboard_image_steps(tb, "preview/input|reconstruction") == [0, 30]
    trend = loss_trend("s0", list(enumerate(result.losses, start=1)), window=5)
    assert trend.last < 0.9 * trend.first
    assert result.heldout_psnr > result.heldout_psnr_before + 1.0
    assert result.num_heldout_frames == 8 * 20
    # stage 1 builds the tiny config and loads this checkpoint: spatial weights are the trained ones
    pipe = VideoVAEPipeline.from_train_config(cfg, ckpt_path=str(result.checkpoint))
    loaded = VideoVAEPipeline.from_pretrained(result.checkpoint)
    heldout = load_frames(sample.heldout_csv)[:16]
    assert spatial_psnr(pipe.spatial_vae.module, heldout) == pytest.approx(
        spatial_psnr(loaded.spatial_vae.module, heldout), abs=1e-9)
    random_spatial = build_tiny_pipeline(seed=42).spatial_vae.module
    assert spatial_psnr(pipe.spatial_vae.module, heldout) > spatial_psnr(random_spatial, heldout) + 1.0


def test_train_spatial_vae_trains_and_rejects_zero_steps_or_a_frozen_module():
    pipe = build_tiny_pipeline()  # the stage-1 tiny config builds the spatial VAE frozen
    frames = torch.rand(4, 3, 64, 64) * 2 - 1
    with pytest.raises(ValueError, match="frozen"):
        train_spatial_vae(pipe.spatial_vae.module, frames, steps=2)
    pipe.set_freeze_spatial(False)
    vae = pipe.spatial_vae.module
    before = [p.detach().clone() for p in vae.parameters()]
    losses = train_spatial_vae(vae, frames, steps=2, batch_size=2, progress=False)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    with pytest.raises(ValueError, match="steps"):
        train_spatial_vae(vae, frames, steps=0)


def test_stage0_progress_is_plain_lines_with_an_eta(capsys):
    """Readable in a log file: ten whole lines per run (no carriage-return redraws), each with the
    step, the loss and an ETA."""
    pipe = build_tiny_pipeline(freeze_spatial=False)
    frames = torch.rand(4, 3, 32, 32) * 2 - 1
    train_spatial_vae(pipe.spatial_vae.module, frames, steps=20, batch_size=2, progress=True)
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    lines = captured.out.splitlines()
    assert len(lines) == 10
    assert [int(line.split("step ")[1].split("/")[0]) for line in lines] == list(range(2, 21, 2))
    assert all("/20," in line and "ETA" in line for line in lines)
    from examples.quickstart.stage0 import progress_line

    line = progress_line(5, 20, [4.0, 3.0, 2.0, 1.0, 5.0], since=time.perf_counter() - 10.0)
    assert "step 5/20" in line and "ETA 30 s" in line and "last 2: 3" in line


def test_pretrained_spatial_start_keeps_its_weights_and_writes_loadable_configs(tmp_path):
    """`--spatial-vae DIR`: the pipeline saved for stage 1 holds that AutoencoderKL's weights,
    and the stage configs written for it build the same architecture."""
    from diffusers import AutoencoderKL

    from examples.quickstart.pretrained_spatial import save_pipeline_with_spatial, write_stage_configs
    from opensora_vae.config import load_config
    from opensora_vae.models import VideoVAEPipeline

    model_cfg = load_config(TINY_TRAIN[1]).model.to_dict()
    torch.manual_seed(7)
    vae = AutoencoderKL.from_config(model_cfg["spatial"]["config"])
    vae.save_pretrained(tmp_path / "sd" / "vae")  # diffusers pipeline layout: found in vae/
    ckpt, spatial_config = save_pipeline_with_spatial(model_cfg, str(tmp_path / "sd"), tmp_path / "stage0")
    loaded = VideoVAEPipeline.from_pretrained(ckpt)
    for name, value in vae.state_dict().items():
        assert torch.equal(loaded.spatial_vae.module.state_dict()[name], value), name
    configs = write_stage_configs(TINY_TRAIN, spatial_config, tmp_path / "configs")
    stage1 = load_config(configs[1]).model.to_dict()
    assert stage1["spatial"]["config"] == spatial_config
    VideoVAEPipeline.from_train_config(stage1, ckpt_path=str(ckpt))  # the architecture fits


def test_loss_trend_windows():
    trend = loss_trend("x", list(enumerate([10, 8, 6, 4, 2, 2, 2, 1, 1, 1], start=1)))
    assert trend.window == 2 and trend.first == 9 and trend.last == 1 and trend.fell
    assert trend.change == pytest.approx(-8 / 9)
    rising = loss_trend("y", [(1, 1.0), (2, 1.0), (3, 5.0), (4, 5.0)], window=2)
    assert not rising.fell and rising.change == pytest.approx(4.0) and rising.steps == 4
    assert loss_trend("z", [(1, float("nan")), (2, 3.0), (3, 1.0)], window=2).first == 3.0
    with pytest.raises(ValueError, match="no finite"):
        loss_trend("empty", [(1, float("nan")), (2, float("nan"))])


def test_loss_trend_terms_use_the_run_windows():
    """A sparse term (logged on some steps only) is averaged over the same step windows; a term
    missing from a window is left out instead of compared over other steps."""
    total = [(s, 10.0 - s) for s in range(1, 11)]
    identity = [(2, 4.0), (9, 1.0), (10, 3.0)]
    late_only = [(9, 1.0)]
    trend = loss_trend("t", total, window=3, terms={"identity": identity, "late": late_only})
    assert trend.first == pytest.approx(8.0) and trend.last == pytest.approx(1.0)
    assert trend.terms == {"identity": (4.0, 2.0)}


def test_epoch_window():
    from examples.quickstart.run import epoch_window

    assert epoch_window(484, 22) == 110  # 22 epochs: 5 whole epochs per window
    assert epoch_window(88, 22) == 22
    assert epoch_window(30, 22) == 6  # under 2 epochs: a fifth of the run


def test_read_tensorboard_scalars(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step, value in [(1, 5.0), (2, 4.0), (3, 3.5)]:
        writer.add_scalar("loss/loss", value, step)
        writer.add_scalar("train/lr", 0.1, step)
    writer.add_scalar("loss/identity", 7.0, 2)
    writer.close()
    curves = read_tensorboard_scalars(tmp_path / "tb")
    assert curves == {"loss/identity": [(2, 7.0)], "loss/loss": [(1, 5.0), (2, 4.0), (3, 3.5)]}
    with pytest.raises(ValueError, match="other/"):
        read_tensorboard_scalars(tmp_path / "tb", prefix="other/")
    with pytest.raises(FileNotFoundError):
        read_tensorboard_scalars(tmp_path / "nothing")


def test_results_table_marks_missing_metrics():
    table = format_results_table([ResultRow("a", {"psnr": 20.0, "ssim": 0.5}), ResultRow("bb", {"psnr": 21.25})],
                                 ["psnr", "ssim"])
    lines = table.splitlines()
    assert lines[0].split() == ["reconstruction", "PSNR", "SSIM"]
    assert lines[1].split() == ["a", "20.0000", "0.5000"]
    assert lines[2].split() == ["bb", "21.2500", "-"]


def test_entry_runs_from_the_checkout_and_the_package_never_imports_it():
    """`scripts/quickstart.sh` runs `python -m examples.quickstart`; the installed package must
    work without examples/ (it is not installed)."""
    from examples.quickstart.__main__ import main
    from opensora_vae.cli import run_main

    assert "python -m examples.quickstart" in (REPO / "scripts" / "quickstart.sh").read_text()
    assert run_main(main, ["--help"]) == 0
    assert run_main(main, ["--stage0-steps", "x"]) == 2  # argparse: bad flag
    offenders = [str(p) for p in (REPO / "opensora_vae").rglob("*.py")
                 if any(line.lstrip().startswith(("import examples", "from examples"))
                        for line in p.read_text().splitlines())]
    assert offenders == []


def _fake_summary(tmp_path):
    from dataclasses import asdict

    from examples.quickstart.run import DemoSummary

    trends = [loss_trend("stage 0 spatial VAE (L1 + KL)", [(1, 3437.0), (2, 2355.0)], window=1),
              loss_trend("stage 1 (latent L1 + identity)", [(1, 138.6), (2, 75.5)], window=1,
                         terms={"z_rec": [(1, 120.0), (2, 70.0)]})]
    rows = [ResultRow("full pipeline after stage 1", {"psnr": 15.1234, "ssim": 0.25, "lpips": 0.4}),
            ResultRow("spatial VAE only after stage 3", {"psnr": 20.5, "ssim": 0.6})]
    summary = DemoSummary(out_dir=str(tmp_path), data="22 train clips", seconds={"data": 3.0, "stage0": 73.0,
                                                                                "total": 400.0},
                          losses=[asdict(t) for t in trends], results=[asdict(r) for r in rows], notes=["a note"],
                          videos={}, tensorboard=[], heldout="source frames 80-99 (never trained on), first 17 "
                          "frames, 64x64", machine="x86_64, 2 cores")
    path = tmp_path / "summary.json"
    path.write_text(__import__("json").dumps(summary.__dict__))
    return path


def test_update_results_regenerates_only_the_quickstart_section(tmp_path):
    from examples.quickstart.update_results import main
    from opensora_vae.cli import run_main

    begin, end = "<!-- quickstart: begin (generated, do not edit) -->", "<!-- quickstart: end -->"
    summary = _fake_summary(tmp_path)
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Results\n\nbefore\n\n{begin}\nold hand-typed numbers 16.60 dB\n{end}\n\nafter\n")
    assert run_main(main, [str(summary), "--results", str(results)]) == 0
    text = results.read_text()
    assert text.startswith("# Results\n\nbefore\n\n" + begin) and text.endswith(end + "\n\nafter\n")
    section = text[text.index(begin):text.index(end)]
    assert "16.60" not in section
    assert "| stage 1 (latent L1 + identity) | 2 | 138.6 | 75.5 | -46% |" in section
    assert "| full pipeline after stage 1 | 15.12 | 0.2500 | 0.4000 |" in section
    assert "| spatial VAE only after stage 3 | 20.50 | 0.6000 | - |" in section
    assert "6.7 min" in section and "a note" in section
    assert run_main(main, [str(summary), "--results", str(results)]) == 0
    assert results.read_text() == text  # idempotent
    assert run_main(main, [str(tmp_path / "missing.json"), "--results", str(results)]) == 2
    assert results.read_text() == text


def _tensorboard_image_steps(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"images": 0})
        acc.Reload()
        if tag in acc.Tags().get("images", []):
            steps += [e.step for e in acc.Images(tag)]
    return sorted(steps)


def test_contact_sheet_puts_each_reconstruction_in_its_column(tmp_path):
    """Rows: held-out clips; columns: real | spatial | full pipeline per stage. Each cell is the
    middle frame of that clip in that column's folder (flat colours make it checkable)."""
    from PIL import Image

    from examples.quickstart.contact_sheet import CELL, GAP, LABEL_HEIGHT, write_contact_sheet
    from opensora_vae.data.video_io import write_video

    colours = {"real": (200, 30, 30), "spatial": (30, 200, 30), "stage 1": (30, 30, 200)}
    columns = {}
    for c, (title, colour) in enumerate(colours.items()):
        folder = tmp_path / f"col{c}"
        folder.mkdir()
        for clip in range(6):
            frames = np.zeros((5, 16, 16, 3), np.uint8)
            frames[:] = colour
            frames[2, :, :, 0] = clip * 40  # the middle frame carries the clip number
            write_video(folder / f"{clip:03d}.mp4", frames, fps=8, lossless=True)
        columns[title] = folder
    sheet_path = write_contact_sheet(columns, tmp_path / "sheet" / "contact.png", max_rows=3)
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    assert sheet.shape == (LABEL_HEIGHT + 3 * (CELL + GAP) + GAP, 3 * (CELL + GAP) + GAP, 3)
    for r, clip in enumerate([0, 2, 5]):  # 3 rows evenly spaced over 6 clips
        for c, colour in enumerate(colours.values()):
            y, x = LABEL_HEIGHT + r * (CELL + GAP) + CELL // 2, GAP + c * (CELL + GAP) + CELL // 2
            assert tuple(sheet[y, x]) == (clip * 40, colour[1], colour[2])
    with pytest.raises(FileNotFoundError):
        write_contact_sheet({"empty": tmp_path / "sheet_empty_dir_missing"}, tmp_path / "x.png")


def test_every_training_config_previews_in_tensorboard():
    """Issue 23 item 4: an input|reconstruction image in TensorBoard whatever the config."""
    from opensora_vae.config import load_config

    for stage in (1, 2, 3):
        for path in (TINY_TRAIN[stage], REPO / "configs" / "vae" / "train" / f"stage{stage}.py"):
            assert load_config(path).preview_every > 0, path


def test_update_results_gives_the_range_over_runs_and_what_differed(tmp_path):
    """Issue 23 item 5: several runs' summaries give min – max per number, and each pair is
    classified (commit vs machine) with whether its numbers are identical."""
    import json

    from examples.quickstart.update_results import main
    from opensora_vae.cli import run_main

    base = json.loads(_fake_summary(tmp_path).read_text())
    runs = {"a": dict(base, commit="4061024", cpu="CPU X", threads=2),
            "b": dict(base, commit="e7f2af7", cpu="CPU X", threads=2),
            "c": dict(base, commit="e7f2af7", cpu="CPU X", threads=1)}
    runs["c"] = json.loads(json.dumps(runs["c"]))
    runs["c"]["losses"][1]["last"] = 80.0
    runs["c"]["results"][0]["metrics"]["psnr"] = 16.5
    paths = []
    for name, summary in runs.items():
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "summary.json")
        paths[-1].write_text(json.dumps(summary))
    results = tmp_path / "RESULTS.md"
    assert run_main(main, [*map(str, paths), "--results", str(results), "--section", "quickstart-trajectory"]) == 0
    text = results.read_text()
    assert "<!-- quickstart-trajectory: begin" in text and "3 runs" in text
    assert "| stage 1 (latent L1 + identity) | 2 | 138.6 | 75.5 – 80 |" in text
    assert "| full pipeline after stage 1 | 15.12 – 16.50 |" in text
    assert "- commits 4061024 vs e7f2af7, same CPU and threads: identical numbers" in text
    assert "- same commit, CPU X / 2 threads vs CPU X / 1 threads: numbers differ by up to 9.1%" in text


@pytest.mark.parametrize("change", ["steps", "stage", "label", "heldout"])
def test_update_results_refuses_runs_of_other_settings(tmp_path, change):
    """Runs are merged number by number into ranges "of the same settings": a run whose stages,
    step counts, result rows or held-out clips differ from the first run's is an error, not a
    silent range over unrelated numbers."""
    import json

    from examples.quickstart.update_results import main
    from opensora_vae.cli import run_main

    base = json.loads(_fake_summary(tmp_path).read_text())
    other = json.loads(json.dumps(base))
    if change == "steps":
        other["losses"][1]["steps"] += 10
    elif change == "stage":
        other["losses"][1]["name"] = "stage 2 (latent L1)"
    elif change == "label":
        other["results"][0]["label"] = "full pipeline after stage 2"
    else:
        other["heldout"] = "source frames 60-79"
    paths = []
    for name, summary in (("a", base), ("b", other)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "summary.json")
        paths[-1].write_text(json.dumps(summary))
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n")
    assert run_main(main, [*map(str, paths), "--results", str(results)]) == 2
    assert results.read_text() == "# Results\n"
