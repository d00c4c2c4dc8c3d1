"""A data table that changes between runs, and too many unreadable rows, through real runs of
`scripts/train_vae.py` (tiny stage 1, 32x32), as a user meets them on their own data:

- an 11-row table with one clip too short for the clip length aborts (default 5 % allowance)
  naming that file, once per file in the log, and the two ways forward;
- removing the row and `--load auto` resumes at the same global step: the interrupted epoch
  restarts over the new table (a new permutation), with a warning, no traceback;
- `--load auto` with another seed resumes the same way (the order is a function of the seed);
- under torchrun the abort names the bad files read by every rank, not only its own.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from opensora_vae.data.sampler import StatefulDistributedSampler
from opensora_vae.training.checkpoint import find_latest_checkpoint, read_training_state
from tests.helpers import (FAST_TRAIN_OPTIONS, TINY_STAGE1, TRAIN_ENTRY, finish, make_media_csv, start, torchrun_cmd,
                           train_cmd, write_csv)

TIMEOUT = 240
MAX_STEPS = 30
ERROR = re.compile(r"^error(?: \(rank \d+\))?: aborting at step (\d+): ([^\n]*)$", re.M)
WARNING = re.compile(r"^\S+ \S+(?: \[rank \d+\])? WARNING [\w.]+: ([^\n]*)$", re.M)


def _errors(out: str) -> list[tuple[int, str]]:
    return [(int(step), text) for step, text in ERROR.findall(out)]


@pytest.fixture(scope="module")
def short_table(bad_media, tmp_path_factory) -> tuple[Path, Path]:
    """(11-row CSV: the bundled clip, 9 images and the 5-frame clip; the short clip's path)."""
    short = bad_media.unusable["short.mp4"][0]
    return make_media_csv(tmp_path_factory.mktemp("short_table"), num_images=9, extra_rows=[str(short)]), short


@pytest.fixture(scope="module")
def aborted(short_table, tmp_path_factory):
    """The run that stops on the short clip (checkpoints every 2 steps until then)."""
    csv, _ = short_table
    outputs = tmp_path_factory.mktemp("aborted") / "run"
    result = finish(start(train_cmd(csv, outputs, "ckpt_every=2", f"max_steps={MAX_STEPS}")), TIMEOUT)
    return result, outputs


@pytest.mark.timeout(300)
def test_too_many_unreadable_rows_abort_naming_the_files_once(short_table, aborted):
    csv, short = short_table
    result, outputs = aborted
    assert result.code == 2 and "Traceback" not in result.out, result.out
    (step, message), = _errors(result.out)
    assert str(short) in message
    # The two ways forward, by the names a user acts on.
    assert "make_csv.py" in message and "--min-frames" in message and "max_skip_fraction" in message
    # The short clip was skipped in each of two epochs; the log names it once, not twice per skip.
    lines = [l for l in result.out.splitlines() if str(short) in l and not ERROR.match(l)]
    assert len(lines) == 1, lines
    latest = find_latest_checkpoint(outputs)
    assert latest is not None and read_training_state(latest)["global_step"] < step
    # TensorBoard: per-step skips are samples, and the tag says so.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(outputs / "tensorboard")).Reload().Tags()["scalars"]
    assert "data/skipped_samples_step" in tags and "data/skipped_step" not in tags


@pytest.mark.timeout(400)
def test_resume_after_the_table_or_the_seed_changed_restarts_the_epoch(short_table, aborted, tmp_path):
    csv, short = short_table
    result, outputs = aborted
    assert result.code == 2, result.out
    saved = read_training_state(find_latest_checkpoint(outputs))
    step, epoch = saved["global_step"], saved["sampler"]["epoch"]
    assert saved["sampler"]["dataset_len"] == 11 and saved["sampler"]["global_consumed"] > 0

    # The user's fix: drop the short row. And, separately, a rerun with another seed.
    fixed = csv.with_name("fixed.csv")  # beside it: its image rows are relative to the folder
    write_csv(fixed, [l for l in csv.read_text().splitlines()[1:] if l != str(short)])
    fixed_out, seed_out = tmp_path / "fixed_run", tmp_path / "seed_run"
    shutil.copytree(outputs, fixed_out)
    shutil.copytree(outputs, seed_out)
    runs = {"table": start(train_cmd(fixed, fixed_out, "ckpt_every=2", f"max_steps={MAX_STEPS}",
                                     "--load", "auto")),
            "seed": start(train_cmd(csv, seed_out, "ckpt_every=2", f"max_steps={MAX_STEPS}",
                                    "max_skip_fraction=0.9", "--load", "auto", "--seed", "8"))}
    results = {name: finish(proc, TIMEOUT) for name, proc in runs.items()}

    for name, new_len, seed in (("table", 10, 42), ("seed", 11, 8)):
        res, out = results[name], (fixed_out if name == "table" else seed_out)
        assert res.code == 0 and "Traceback" not in res.out, res.out
        final = read_training_state(out / f"step_{MAX_STEPS:09d}")
        assert final["global_step"] == MAX_STEPS and final["sampler"]["dataset_len"] == new_len
        assert final["sampler"]["seed"] == seed
        # The saved epoch restarted at its first sample over the new order: every step since
        # the checkpoint is a sample of that epoch or a later one, counted from position 0.
        done = (final["sampler"]["epoch"] - epoch) * new_len + final["sampler"]["global_consumed"]
        assert done == MAX_STEPS - step
        assert re.search(rf"step {step + 1}/{MAX_STEPS} \|", res.out)
        changed = "dataset_len=11" if name == "table" else "seed=42"
        assert any(changed in w for w in WARNING.findall(res.out)), res.out
    # The old table's unreadable-sample counts do not judge the new table.
    assert read_training_state(fixed_out / f"step_{MAX_STEPS:09d}")["skipped_total"] == 0


@pytest.mark.timeout(300)
def test_under_torchrun_the_abort_names_the_bad_rows_of_every_rank(bad_media, tmp_path):
    # 20 rows, 2 ranks, batch 1: rank 1 reads global positions 1, 3, ... Two bad rows sit at
    # positions 1 and 3, so only rank 1 ever reads them; rank 0 reads only good rows.
    seed, n = 3, 20
    order = StatefulDistributedSampler(n, 2, 1, seed=seed).global_order(0)
    bad = {int(order[1]): bad_media.unusable["zero.mp4"][0], int(order[3]): bad_media.unusable["text.mp4"][0]}
    assert all((i + 1) % n not in bad for i in bad)  # each is replaced by a good row
    csv = make_media_csv(tmp_path / "data", num_images=n - 1)
    rows = csv.read_text().splitlines()[1:]
    write_csv(csv, [bad.get(i, row) for i, row in enumerate(rows)])
    cmd = torchrun_cmd(2, TRAIN_ENTRY, TINY_STAGE1, "--data-path", csv, "--outputs", tmp_path / "out",
                       "--seed", str(seed), "--cfg-options", *FAST_TRAIN_OPTIONS, f"max_steps={MAX_STEPS}")
    result = finish(start(cmd), TIMEOUT)
    assert result.code != 0, result.out  # torchrun's own exit status for a failed rank
    errors = _errors(result.out)
    assert errors, result.out
    for _, message in errors:  # whichever rank prints it
        assert all(str(path) in message for path in bad.values()), message
