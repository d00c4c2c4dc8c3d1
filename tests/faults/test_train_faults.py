"""Training under faults, through `scripts/train_vae.py`: preemption (SIGKILL of every process of
a 2-rank torchrun run) at random steps and inside a checkpoint write, repeated non-finite losses,
config typos, bad `--ckpt-path`, and resuming with another world or batch size.

The resume cases compare against one uninterrupted 2-rank run (module fixture): after any number
of kills and `--load auto` restarts, the final weights, EMA, optimizer, RNG and sampler states
must equal it bit for bit (CPU, deterministic=True).
"""

from __future__ import annotations

import random
import re
import shutil
import sys
from pathlib import Path

import pytest

from opensora_vae.config import load_config
from opensora_vae.training import Trainer
from opensora_vae.training.checkpoint import TMP_PREFIX, find_latest_checkpoint, read_lineage, read_training_state
from tests.helpers import (assert_same_state, FAST_TRAIN_OPTIONS, TINY_STAGE1, TRAIN_ENTRY, child_env, make_media_csv, run,
                           run_and_kill_when, run_entry, torchrun_cmd)

from .train_worker import FAULT_STALL_MARKER

WORKER = Path(__file__).with_name("train_worker.py")
STEPS = 8
# ckpt_every=1: a kill lands before, inside or after a checkpoint write, wherever it falls.
RESUME_OPTIONS = [f"max_steps={STEPS}", "ckpt_every=1", "keep_last_ckpts=3", "ema_decay=0.9"]
STEP_LINE = re.compile(r"\[rank 0\] INFO opensora_vae\.training: step (\d+)/%d \|" % STEPS)
KILL_AFTER_STEPS = sorted(random.Random(0).sample(range(2, STEPS), 3))  # [2, 5, 7]


def _args(csv: Path, outputs: Path, *extra: str) -> list:
    return [TINY_STAGE1, "--data-path", csv, "--outputs", outputs, "--seed", "3", *extra,
            "--cfg-options", *FAST_TRAIN_OPTIONS, *RESUME_OPTIONS]


def _torchrun(csv: Path, outputs: Path, *extra: str, script: Path = TRAIN_ENTRY) -> list:
    return torchrun_cmd(2, script, *_args(csv, outputs, *extra))


def assert_equals_reference(final: Path, reference: Path) -> None:
    for weights in ("model/model.safetensors", "ema/model.safetensors"):
        assert (final / weights).read_bytes() == (reference / weights).read_bytes(), weights
    got, want = read_training_state(final), read_training_state(reference)
    for key in ("optimizer", "rng", "sampler", "global_step", "epoch", "skipped_total", "attempts_total"):
        assert_same_state(got[key], want[key], key)


def lineage_of(ckpt: Path | None) -> list[str]:
    """The run ids that led to `ckpt` (read before a run that may prune it); [] for none."""
    return [] if ckpt is None else read_lineage(ckpt)


def assert_resumed_from(lineage: list[str], written: Path | None) -> None:
    """`written` is a checkpoint of a run that resumed from the checkpoint of `lineage` ([]: that
    started from scratch): its run ids are those plus its own."""
    assert written is not None and read_lineage(written)[:-1] == lineage, (lineage, written)


def _clean_exit(log: str) -> None:
    assert "terminate called" not in log  # the gloo shutdown abort the entry must avoid
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    return make_media_csv(tmp_path_factory.mktemp("train_data"), num_images=3)  # 4 rows: 2 steps/epoch


@pytest.fixture(scope="module")
def reference(data_csv, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run; returns its final checkpoint dir."""
    outputs = tmp_path_factory.mktemp("reference")
    result = run(_torchrun(data_csv, outputs), timeout=240)
    assert result.code == 0, result.out
    _clean_exit(result.out)
    return outputs / f"step_{STEPS:09d}"


# ----------------------------------------------------------------------------- preemption


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkill_at_random_steps_then_load_auto_equals_the_uninterrupted_run(data_csv, reference, tmp_path):
    outputs = tmp_path / "run"
    for kill_after in KILL_AFTER_STEPS:
        before = lineage_of(find_latest_checkpoint(outputs))

        def reached(line: str, k=kill_after) -> bool:
            match = STEP_LINE.search(line)
            return match is not None and int(match.group(1)) >= k

        result, fired = run_and_kill_when(_torchrun(data_csv, outputs, "--load", "auto"), reached, timeout=240)
        assert fired is not None, f"run ended before step {kill_after}:\n{result.out}"
        assert result.code != 0  # killed
        assert_resumed_from(before, find_latest_checkpoint(outputs))  # the first run: from scratch
    before = lineage_of(find_latest_checkpoint(outputs))
    final = run(_torchrun(data_csv, outputs, "--load", "auto"), timeout=240)
    assert final.code == 0, final.out
    _clean_exit(final.out)
    assert_resumed_from(before, outputs / f"step_{STEPS:09d}")
    assert len(read_lineage(outputs / f"step_{STEPS:09d}")) == len(KILL_AFTER_STEPS) + 1  # one id per run
    assert_equals_reference(outputs / f"step_{STEPS:09d}", reference)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_rank_killed_ends_the_run_quickly_and_load_auto_recovers(data_csv, reference, tmp_path):
    # A lost node: rank 1 dies, rank 0 must not wait in a collective for the 30-minute timeout.
    outputs = tmp_path / "run"
    result, fired = run_and_kill_when(_torchrun(data_csv, outputs), lambda line: "step 3/" in line,
                                      timeout=120, only=("RANK=1",))
    assert fired is not None and result.code != 0, result.out
    # Rank 0 stops on gloo's "Connection closed by peer" or is stopped by torchrun, whichever is
    # first; either way within seconds (run_and_kill_when fails the test after 120 s).
    before = lineage_of(find_latest_checkpoint(outputs))
    final = run(_torchrun(data_csv, outputs, "--load", "auto"), timeout=240)
    assert final.code == 0, final.out
    _clean_exit(final.out)
    assert_resumed_from(before, outputs / f"step_{STEPS:09d}")
    assert_equals_reference(outputs / f"step_{STEPS:09d}", reference)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_inside_a_checkpoint_write_is_never_resumed_from(data_csv, reference, tmp_path):
    outputs = tmp_path / "run"
    env = child_env(FAULT_STALL_IN_SAVE_AT_STEP="5")
    result, fired = run_and_kill_when(_torchrun(data_csv, outputs, script=WORKER),
                                      lambda line: FAULT_STALL_MARKER in line, timeout=240, env=env)
    assert fired is not None, result.out
    # What the kill left: step 4 complete, step 5 only as a temp dir that holds the weights and
    # the training state (it looks almost complete) but was never renamed into place.
    assert (outputs / "step_000000004" / "training_state.pt").is_file()
    assert not (outputs / "step_000000005").exists()
    (tmp,) = [p for p in outputs.iterdir() if p.name.startswith(f"{TMP_PREFIX}step_000000005.")]
    assert (tmp / "model" / "model.safetensors").is_file() and (tmp / "training_state.pt").is_file()

    before = lineage_of(outputs / "step_000000004")
    final = run(_torchrun(data_csv, outputs, "--load", "auto"), timeout=240)
    assert final.code == 0, final.out
    _clean_exit(final.out)
    assert_resumed_from(before, outputs / f"step_{STEPS:09d}")
    assert not tmp.exists()  # removed at start: a partial save is never loadable
    assert_equals_reference(outputs / f"step_{STEPS:09d}", reference)


# ----------------------------------------------------------------------------- non-finite losses


@pytest.mark.timeout(180)
def test_repeated_non_finite_losses_abort_and_keep_the_last_good_weights(data_csv, tmp_path):
    # One NaN step is skipped with a warning (tests/training/test_distributed.py: on one rank of
    # two; tests/training/test_trainer.py: in-process). Here the loss stays NaN from step 3 on.
    outputs = tmp_path / "run"
    cmd = [sys.executable, WORKER, *_args(data_csv, outputs), "max_nonfinite_steps=3", "keep_last_ckpts=10"]
    result = run(cmd, env=child_env(FAULT_NAN_FROM_STEP="3"))
    assert result.code == 2, result.out
    assert "Traceback" not in result.out
    assert ("error: aborting at step 5: the loss or gradient was non-finite for 3 consecutive steps "
            "(max_nonfinite_steps=3)") in result.out
    steps = sorted(p.name for p in outputs.glob("step_*"))
    assert steps == [f"step_{s:09d}" for s in (1, 2, 3, 4)]  # no checkpoint of the aborting step
    weights = {s: (outputs / f"step_{s:09d}" / "model/model.safetensors").read_bytes() for s in (1, 2, 3, 4)}
    assert weights[1] != weights[2] and weights[2] == weights[3] == weights[4]  # skipped updates
    # Steps 3 and 4 were the first and second non-finite ones in a row; step 5's third aborts.
    assert [read_training_state(outputs / f"step_{s:09d}")["nonfinite_streak"] for s in (1, 2, 3, 4)] == [0, 0, 1, 2]


# ----------------------------------------------------------------------------- settings


def _run_entry(argv: list, capsys) -> tuple[int, str]:
    code = run_entry(TRAIN_ENTRY, argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("override,message", [
    ("ckpt_evry=2", "unknown key 'ckpt_evry'"),
    ("dataset.num_frame=5", "unknown key 'dataset.num_frame'"),
    ("lr=fast", "'lr' = 'fast' has type str, expected float"),
    ("batch_size=1.5", "'batch_size' = 1.5 has type float, expected int"),
    ("max_steps=ten", "'max_steps' = 'ten' has type str, expected int"),
    ("ema_decay=[0.9]", "'ema_decay' = [0.9] has type list, expected float"),
    ("dataset.image_size=64", "'dataset.image_size' = 64 has type int, expected tuple"),
])
def test_config_override_typos_and_wrong_types_fail_before_any_work(data_csv, tmp_path, capsys, override, message):
    outputs = tmp_path / "out"
    code, out = _run_entry([TINY_STAGE1, "--data-path", data_csv, "--outputs", outputs,
                            "--cfg-options", override], capsys)
    assert code == 2 and "error: invalid" in out and message in out, out
    assert "Traceback" not in out and not outputs.exists()


@pytest.mark.parametrize("body,message", [
    ("ckpt_evry = 2", "unknown key 'ckpt_evry' (did you mean 'ckpt_every'?)"),
    ("dataset = dict(num_frames='17')", "'dataset.num_frames' = '17' has type str, expected int"),
    ("model = dict(temporal=dict(filterz=16))", "unknown key 'model.temporal.filterz'"),
])
def test_config_file_typos_and_wrong_types_fail_before_any_work(data_csv, tmp_path, capsys, body, message):
    config = tmp_path / "my_stage1.py"
    config.write_text(f"_base_ = [{str(TINY_STAGE1)!r}]\n{body}\n")
    outputs = tmp_path / "out"
    code, out = _run_entry([config, "--data-path", data_csv, "--outputs", outputs], capsys)
    assert code == 2 and message in out, out
    assert "Traceback" not in out and not outputs.exists()


# ----------------------------------------------------------------------------- --ckpt-path


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("truncated", "cannot read weights"),
    ("garbage_config", "cannot parse"),
    ("config_not_an_object", "not a JSON object"),
    ("other_arch", "does not fit this model architecture"),
])
def test_bad_ckpt_path_is_a_clear_error_before_training(broken_checkpoints, data_csv, tmp_path, capsys,
                                                        case, message):
    outputs = tmp_path / "out"
    code, out = _run_entry([TINY_STAGE1, "--data-path", data_csv, "--outputs", outputs, "--ckpt-path",
                            broken_checkpoints[case], "--cfg-options", *FAST_TRAIN_OPTIONS, "max_steps=1"], capsys)
    assert code == 2 and "error:" in out and message in out, out
    assert str(broken_checkpoints[case]) in out and "Traceback" not in out
    assert not list(outputs.glob("step_*")) and not (outputs / "tensorboard").exists()


def test_load_auto_of_a_damaged_newest_checkpoint_stops_with_its_name(reference, data_csv, tmp_path, capsys):
    # Not a crash (the rename is atomic) but disk damage: all files there, one unreadable. The
    # run stops naming it rather than silently training on from an older step.
    outputs = tmp_path / "out"
    shutil.copytree(reference.parent / "step_000000007", outputs / "step_000000007")
    shutil.copytree(reference, outputs / reference.name)
    state = outputs / reference.name / "training_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    code, out = _run_entry([*_args(data_csv, outputs, "--load", "auto"), "max_steps=9"], capsys)
    assert code == 2 and f"error: cannot read {state}" in out and "Traceback" not in out, out
    assert not (outputs / "step_000000009").exists()


# ----------------------------------------------------------------------------- another layout


@pytest.mark.parametrize("batch_size", [1, 2])
def test_resume_with_another_world_size_continues_at_the_same_global_sample(reference, data_csv, tmp_path,
                                                                            batch_size):
    """A 2-rank checkpoint resumed by one process: the trainer warns that noise streams are
    re-seeded (not bit-identical) and the data continues at the same global sample."""
    outputs = tmp_path / "out"
    shutil.copytree(reference.parent / "step_000000006", outputs / "step_000000006")
    cfg = load_config(TINY_STAGE1, cfg_options=[*FAST_TRAIN_OPTIONS, *RESUME_OPTIONS, "max_steps=7"],
                      cli={"data_path": str(data_csv), "outputs": str(outputs), "seed": 3, "load": "auto",
                           "batch_size": batch_size})
    trainer = Trainer(cfg)
    # Another layout: the noise streams are re-seeded; the data continues at the end of epoch 2.
    assert not trainer.counters.same_layout and trainer.counters.saved_layout == (2, 1)
    assert trainer.sampler.state_dict()["epoch"] == 2 and trainer.sampler.state_dict()["global_consumed"] == 4
    result = trainer.fit()
    order = trainer.sampler.global_order(3).tolist()
    # The 2-rank run's step 7 trained on global samples 0 and 1 of epoch 3 (rank 0, rank 1).
    assert [h["indices"] for h in result.history] == [order[:batch_size]]
    state = read_training_state(outputs / "step_000000007")
    assert state["sampler"]["global_consumed"] == batch_size and state["world_size"] == 1
    assert state["sampler"]["epoch"] == 3
