"""Bad and awkward data through the real dataset and real training runs of `scripts/train_vae.py`
(tiny stage 1, 32x32): convertible inputs are used, unreadable ones are skipped, counted and
named in the log, too many skips abort with a clear message, bad tables fail at start, and no
DataLoader worker hangs or outlives its run.

The media (tests/helpers.py `make_bad_media`): gray, RGBA, CMYK, 16-bit images, a 1-frame
video, a 47x33 video, a path with spaces and non-ASCII characters (usable); a zero-byte file, a
text file named .mp4, a missing file, a 5-frame video, an mp4 cut mid-stream with its index in
front and one cut with its index lost (unusable).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from opensora_vae.data import build_dataloader, read_image, read_video_frames
from opensora_vae.data.clips import SampleSkipped
from opensora_vae.data.dataset import UnreadableSamplesError
from opensora_vae.data.transforms import VideoTransform, frames_to_clip
from opensora_vae.data.video_io import MediaReadError
from opensora_vae.training.checkpoint import read_training_state, read_weights

from tests.helpers import (CLIP_17, TINY_STAGE1, TRAIN_ENTRY, finish, make_dataset, run_entry, start, train_cmd,
                           write_csv)

SIZE = (32, 32)
TRAIN_TIMEOUT = 180  # a run takes ~8 s here; a hung worker would take the loader's 600 s timeout
# Bad rows between usable ones, so that replacements and runs of consecutive skips both happen.
ORDER = ["zero.mp4", "gray.png", "text.mp4", "missing.mp4", "rgba.png", "cmyk.jpg", "short.mp4",
         "truncated.mp4", "gray16.png", "one_frame.mp4", "truncated_index.mp4", "odd_size.mp4",
         "vidéo 1 ü.mp4"]
SKIP_LINE = re.compile(r"unreadable sample skipped \(rank 0\): (.+?): ")


def ordered_rows(media) -> list[Path]:
    return [media.usable[n] if n in media.usable else media.unusable[n][0] for n in ORDER]


def skips_in_one_epoch(bad: list[bool]) -> int:
    """Reads that fail in one epoch where every index is requested once: a bad index is
    replaced by the next one (wrapping), so each request fails once per bad row in a row."""
    total = 0
    for i in range(len(bad)):
        j = i
        while bad[j % len(bad)]:
            total, j = total + 1, j + 1
    return total


@pytest.fixture(scope="module")
def mixed_csv(bad_media) -> Path:
    return write_csv(bad_media.folder / "mixed.csv", ordered_rows(bad_media))


# ----------------------------------------------------------------------------- the dataset


def test_dataset_converts_usable_inputs_and_names_unusable_ones(bad_media, mixed_csv):
    ds = make_dataset(mixed_csv, num_frames=17, image_size=SIZE, max_retries=20)
    transform = VideoTransform("center", SIZE)
    for i, name in enumerate(ORDER):
        if name in bad_media.unusable:
            path, reason = bad_media.unusable[name]
            with pytest.raises((MediaReadError, SampleSkipped)) as err:
                ds.load(i)
            assert reason in str(err.value)
            continue
        clip, is_image = ds.load(i)
        path = bad_media.usable[name]
        if name.endswith((".png", ".jpg")):
            frame = read_image(path)  # the conversions themselves: tests/data/test_video_io.py
            want = transform(frames_to_clip(frame[None])).expand(-1, 17, -1, -1)
        elif name == "one_frame.mp4":
            want = transform(frames_to_clip(read_video_frames(path, [0]))).expand(-1, 17, -1, -1)
        else:  # 17-frame videos: the only window is frames 0..16
            want = transform(frames_to_clip(read_video_frames(path, range(17))))
        assert is_image == (name.endswith((".png", ".jpg")) or name == "one_frame.mp4"), name
        assert clip.shape == (3, 17, *SIZE) and torch.equal(clip, want), name
        assert -1 <= clip.min() < clip.max() <= 1, name
        if name.startswith("gray"):
            assert torch.equal(clip[0], clip[1]) and torch.equal(clip[1], clip[2]), name
    # The 16-bit image is rescaled, not clipped at 255: its values span the range.
    gray16 = ds.load(ORDER.index("gray16.png"))[0]
    assert (gray16 == 1).float().mean() < 0.01 and gray16.std() > 0.3
    # The non-ASCII path with spaces holds the bundled clip.
    spaced = ds.load(ORDER.index("vidéo 1 ü.mp4"))[0]
    assert torch.equal(spaced, transform(frames_to_clip(read_video_frames(CLIP_17, range(17)))))

    # An item replaces a bad row by the next usable one and lists what it skipped, in order.
    item = ds[ORDER.index("text.mp4")]
    assert item["index"] == ORDER.index("rgba.png")
    assert [Path(p).name for p, _ in item["skipped"]] == ["text.mp4", "missing.mp4"]
    item = ds[ORDER.index("truncated_index.mp4")]
    assert item["index"] == ORDER.index("odd_size.mp4") and len(item["skipped"]) == 1


@pytest.mark.timeout(120)
def test_every_row_bad_raises_quickly_in_workers_too(bad_media, tmp_path):
    rows = [p for p, _ in bad_media.unusable.values()]
    ds = make_dataset(write_csv(tmp_path / "bad.csv", rows), num_frames=17, image_size=SIZE, max_retries=8)
    loader = build_dataloader(ds, batch_size=1, num_workers=2, timeout_s=60)
    with pytest.raises(UnreadableSamplesError) as err:
        next(iter(loader))
    # Raised in a worker, re-raised here with the worker's traceback; `reason` is the message.
    # every row was tried once (fewer rows than max_retries): each named, with where it was looked for
    assert err.value.reason.startswith(f"none of the {len(rows)} rows of {tmp_path / 'bad.csv'} could be read "
                                       f"(relative rows are resolved against {tmp_path})")
    assert err.value.reason.endswith("check your CSV") and "\n" not in err.value.reason


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def mixed_runs(mixed_csv, tmp_path_factory):
    """One epoch (13 rows, batch 1) of the mixed CSV with num_workers 0 and 2, run side by side."""
    root = tmp_path_factory.mktemp("mixed_runs")
    procs = {}
    for workers in (0, 2):
        procs[workers] = start(train_cmd(mixed_csv, root / f"w{workers}", f"num_workers={workers}",
                                         f"max_steps={len(ORDER)}", "max_skip_fraction=0.9", "ckpt_every=100"))
    return {w: (finish(p, TRAIN_TIMEOUT), root / f"w{w}") for w, p in procs.items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [0, 2])
def test_training_uses_convertible_inputs_and_counts_and_names_every_skip(bad_media, mixed_runs, workers):
    result, outputs = mixed_runs[workers]
    assert result.code == 0, result.out
    assert "Traceback" not in result.out
    named = SKIP_LINE.findall(result.out)
    # Each unreadable file named once with its reason; no usable file ever skipped.
    assert sorted(Path(p).name for p in named) == sorted(bad_media.unusable)
    for name, (path, reason) in bad_media.unusable.items():
        assert f"unreadable sample skipped (rank 0): {path}: " in result.out
        assert re.search(re.escape(f"{path}: ") + r"[^\n]*" + re.escape(reason), result.out), name
    for path in bad_media.usable.values():
        assert str(path) not in "\n".join(l for l in result.out.splitlines() if "skip" in l)
    expected = skips_in_one_epoch([n in bad_media.unusable for n in ORDER])
    assert expected == 8  # zero; text, missing; short, truncated; truncated_index
    state = read_training_state(outputs / f"step_{len(ORDER):09d}")
    assert state["global_step"] == len(ORDER) and state["skipped_total"] == expected
    assert state["attempts_total"] == len(ORDER) + expected  # one sample per step, plus each skipped read


def test_both_loader_settings_train_on_the_same_samples(mixed_runs):
    # Workers only move the decoding: the same samples in the same order give the same weights.
    weights = {w: read_weights(out / f"step_{len(ORDER):09d}" / "model") for w, (_, out) in mixed_runs.items()}
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


@pytest.mark.timeout(300)
def test_too_many_skips_abort_with_examples_and_every_bad_row_aborts_fast(bad_media, mixed_csv, tmp_path):
    all_bad = write_csv(tmp_path / "all_bad.csv", [p for p, _ in bad_media.unusable.values()])
    too_many = start(train_cmd(mixed_csv, tmp_path / "too_many", "max_steps=20"))  # default 5 % allowed
    every_bad = start(train_cmd(all_bad, tmp_path / "all_bad", "num_workers=2", "max_steps=20"))
    too_many, every_bad = finish(too_many, TRAIN_TIMEOUT), finish(every_bad, TRAIN_TIMEOUT)

    assert too_many.code == 2 and "Traceback" not in too_many.out, too_many.out
    match = re.search(r"error: aborting at step (\d+): (\d+) of (\d+) sample reads failed "
                      r"\(> max_skip_fraction=0\.05\)\. Unreadable: ([^\n]+)", too_many.out)
    assert match, too_many.out
    skipped, attempts = int(match.group(2)), int(match.group(3))
    assert attempts >= 20 and skipped > 0.05 * attempts
    assert any(str(p) in match.group(4) for p, _ in bad_media.unusable.values())
    assert not list((tmp_path / "too_many").glob("step_*"))

    assert every_bad.code == 2 and "Traceback" not in every_bad.out, every_bad.out
    assert re.search(r"error: none of the \d+ rows of " + re.escape(str(all_bad)) + r" could be read .+: check your CSV",
                     every_bad.out)
    assert not list((tmp_path / "all_bad").glob("step_*"))


@pytest.mark.parametrize("content,message", [
    ("video\na.mp4\n", "no 'path' column (columns: ['video'])"),
    ("", "cannot read table (the file is empty"),
    ("path\n", "table has no rows"),
    ("path\n\"\"\n", "1 empty 'path' values (lines [2]...)"),
])
def test_bad_tables_fail_at_start_with_the_file_named(tmp_path, capsys, content, message):
    csv = tmp_path / "data.csv"
    csv.write_text(content)
    code = run_entry(TRAIN_ENTRY, [TINY_STAGE1, "--data-path", csv, "--outputs", tmp_path / "out"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {csv}: {message}" in err, err
    assert "Traceback" not in err
    assert not list((tmp_path / "out").glob("step_*"))


def test_a_missing_table_fails_at_start(tmp_path, capsys):
    code = run_entry(TRAIN_ENTRY, [TINY_STAGE1, "--data-path", tmp_path / "nope.csv", "--outputs", tmp_path / "out"])
    assert code == 2 and "nope.csv: file not found" in capsys.readouterr().err
