"""Through the real entry script: N steps straight == N/2 steps + `--load auto` + N/2, bit for bit."""

import subprocess
import sys


from opensora_vae.training.checkpoint import TMP_PREFIX, read_training_state
from tests.helpers import assert_same_state, REPO, make_media_csv

ENTRY = str(REPO / "scripts" / "train_vae.py")
CONFIG = str(REPO / "configs/vae/train/tiny/stage1.py")
# seed 7 draws [17, 17, 1, 1, 1, 17] frames for steps 1-6: video and image steps on both halves.
OPTIONS = ["dataset.image_size=[32,32]", "ckpt_every=2", "ema_decay=0.9", "deterministic=True",
           "keep_last_ckpts=10"]


def _launch(outputs, csv, max_steps, *extra):
    cmd = [sys.executable, ENTRY, CONFIG, "--data-path", str(csv), "--outputs", str(outputs), "--seed", "7",
           *extra, "--cfg-options", *OPTIONS, f"max_steps={max_steps}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_resume_is_exact_and_ignores_unfinished_checkpoints(tmp_path):
    csv = make_media_csv(tmp_path / "data", num_images=2)
    straight, split = tmp_path / "straight", tmp_path / "split"
    # Independent runs overlap in time: the box has 2 cores and most of a run is start-up.
    runs = [_launch(straight, csv, 6), _launch(split, csv, 3),
            _launch(tmp_path / "bad", csv, 1, "--load", str(tmp_path / "nope"))]
    (code_a, log_a), (code_b, log_b), (code_bad, log_bad) = [_finish(p) for p in runs]
    assert code_a == 0, log_a
    assert code_b == 0, log_b
    assert code_bad == 2 and "error: --load" in log_bad and "no such checkpoint directory" in log_bad
    assert "Traceback" not in log_bad  # a user error is a message, not a crash report

    # Leftovers of an interrupted save: a temp dir (even a complete-looking one) and a step dir
    # that lacks its training state. Neither may be picked by --load auto.
    import shutil

    shutil.copytree(split / "step_000000003", split / f"{TMP_PREFIX}step_000000005.4242")
    shutil.copytree(split / "step_000000003" / "model", split / "step_000000004" / "model")
    code_c, log_c = _finish(_launch(split, csv, 6, "--load", "auto"))
    assert code_c == 0, log_c
    assert f"resuming from {split / 'step_000000003'}" in log_c
    # The dead run's temp dir is removed under the outputs lock (never loadable, only disk use).
    assert not (split / f"{TMP_PREFIX}step_000000005.4242").exists()
    assert "step 4/6" in log_c and "step 3/6" not in log_c

    a, b = straight / "step_000000006", split / "step_000000006"
    for weights in ("model/model.safetensors", "ema/model.safetensors"):
        assert (a / weights).read_bytes() == (b / weights).read_bytes(), weights
    state_a, state_b = read_training_state(a), read_training_state(b)
    for key in ("optimizer", "rng", "sampler", "global_step", "epoch"):
        assert_same_state(state_a[key], state_b[key], key)
    assert state_b["global_step"] == 6 and state_b["world_size"] == 1 and state_b["batch_size"] == 1
    # The step-4 dir that the resumed run wrote replaced the incomplete one.
    assert (b.parent / "step_000000004" / "training_state.pt").is_file()
