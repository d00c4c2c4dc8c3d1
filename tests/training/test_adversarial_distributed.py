"""The adversarial phase under torchrun (2 gloo processes, the real entry script): a run that is
stopped and resumed with `--load auto` equals an uninterrupted one bit for bit (the discriminator,
its optimizer and the LeCam EMAs are checkpoint entries), and the step runs under FSDP2."""

import pytest
import torch

from opensora_vae.training.checkpoint import read_training_state
from tests.helpers import (REPO, TRAIN_ENTRY, assert_same_state, finish, kill_run, make_media_csv, run, start,
                           torchrun_cmd)

CONFIG = str(REPO / "configs/vae/train/tiny/stage3_gan.py")
OPTIONS = ["dataset.image_size=[32,32]", "dataset.num_frames=9", "perceptual_random_backbone=True",
           "lecam_loss_weight=0.001", "deterministic=True", "keep_last_ckpts=10", "ckpt_every=2"]
TIMEOUT = 400  # s per torchrun job; a hung one is killed with all its ranks and workers


def _train_cmd(outputs, csv, max_steps, *extra, options=()):
    return torchrun_cmd(2, TRAIN_ENTRY, CONFIG, "--data-path", csv, "--outputs", outputs, "--seed", "5", *extra,
                        "--cfg-options", *OPTIONS, f"max_steps={max_steps}", *options)


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return make_media_csv(tmp_path_factory.mktemp("gan_data"), num_images=3)


def test_ddp_run_with_the_discriminator_resumes_bit_identically(tmp_path, csv):
    straight, split = tmp_path / "straight", tmp_path / "split"
    runs = [start(_train_cmd(straight, csv, 4)), start(_train_cmd(split, csv, 2))]  # side by side
    try:
        run_a, run_b = [finish(p, TIMEOUT) for p in runs]
    finally:
        for proc in runs:  # the other job too, when one hung
            kill_run(proc)
    assert run_a.code == 0, run_a.out
    assert run_b.code == 0, run_b.out
    run_c = run(_train_cmd(split, csv, 4, "--load", "auto"), TIMEOUT)
    assert run_c.code == 0, run_c.out
    assert "step 3/4" in run_c.out and "step 2/4" not in run_c.out

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
    fsdp = run(_train_cmd(tmp_path / "fsdp", csv, 2, options=["parallel=fsdp"]), TIMEOUT)
    assert fsdp.code == 0, fsdp.out
    assert "2 × fsdp" in fsdp.out and "step 2/2" in fsdp.out and "adversarial=" in fsdp.out
    state = read_training_state(tmp_path / "fsdp" / "step_000000002")
    assert state["discriminator"]["linear2.weight"].shape == (1, 32) and state["lecam_ema"]["real"] != 0
