"""The adversarial phase under torchrun (2 gloo processes, the real entry script): a run that is
stopped and resumed with `--load auto` equals an uninterrupted one bit for bit (the discriminator,
its optimizer and the LeCam EMAs are checkpoint entries), and the step runs under FSDP2."""

import subprocess
import sys

import pytest
import torch

from opensora_vae.training.checkpoint import read_training_state
from tests.helpers import assert_same_state, REPO, make_media_csv, child_env

CONFIG = str(REPO / "configs/vae/train/tiny/stage3_gan.py")
OPTIONS = ["dataset.image_size=[32,32]", "dataset.num_frames=9", "perceptual_random_backbone=True",
           "lecam_loss_weight=0.001", "deterministic=True", "keep_last_ckpts=10", "ckpt_every=2"]


def _torchrun(outputs, csv, max_steps, *extra, options=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "scripts" / "train_vae.py"), CONFIG, "--data-path", str(csv), "--outputs", str(outputs),
           "--seed", "5", *extra, "--cfg-options", *OPTIONS, f"max_steps={max_steps}", *options]
    env = child_env()
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc, timeout=400):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return make_media_csv(tmp_path_factory.mktemp("gan_data"), num_images=3)


def test_ddp_run_with_the_discriminator_resumes_bit_identically(tmp_path, csv):
    straight, split = tmp_path / "straight", tmp_path / "split"
    runs = [_torchrun(straight, csv, 4), _torchrun(split, csv, 2)]
    (code_a, log_a), (code_b, log_b) = [_finish(p) for p in runs]
    assert code_a == 0, log_a
    assert code_b == 0, log_b
    code_c, log_c = _finish(_torchrun(split, csv, 4, "--load", "auto"))
    assert code_c == 0, log_c
    assert "step 3/4" in log_c and "step 2/4" not in log_c

    a, b = straight / "step_000000004", split / "step_000000004"
    assert (a / "model/model.safetensors").read_bytes() == (b / "model/model.safetensors").read_bytes()
    state_a, state_b = read_training_state(a), read_training_state(b)
    for key in ("discriminator", "discriminator_optimizer", "discriminator_lr_scheduler", "lecam_ema", "optimizer",
                "lr_scheduler", "rng", "sampler"):
        assert_same_state(state_a[key], state_b[key], key)
    # The discriminator trained (its weights moved from the step-2 ones) and the EMAs moved from 0.
    mid = read_training_state(split / "step_000000002")
    assert not torch.equal(mid["discriminator"]["linear1.weight"], state_b["discriminator"]["linear1.weight"])
    assert state_b["lecam_ema"]["real"] != 0 and state_b["discriminator_optimizer"]["state"]


def test_fsdp_run_with_the_discriminator(tmp_path, csv):
    code, log = _finish(_torchrun(tmp_path / "fsdp", csv, 2, options=["parallel=fsdp"]))
    assert code == 0, log
    assert "2 × fsdp" in log and "step 2/2" in log and "adversarial=" in log
    state = read_training_state(tmp_path / "fsdp" / "step_000000002")
    assert state["discriminator"]["linear2.weight"].shape == (1, 32) and state["lecam_ema"]["real"] != 0
