"""Learning-rate schedules: constant by default, warmup then linear or cosine decay, and exact resume."""

import math

import pytest
import torch

from opensora_vae.config import load_config
from opensora_vae.errors import UserError
from opensora_vae.training import Trainer
from opensora_vae.training.schedule import build_lr_scheduler, lr_factor
from tests.helpers import TINY_STAGE1, make_media_csv, tiny_train_cfg


def test_factors_follow_warmup_then_the_decay_to_the_floor():
    cosine = lr_factor("cosine", warmup_steps=2, total_steps=12, min_lr_ratio=0.1)
    assert [cosine(s) for s in (0, 1)] == [0.5, 1.0]
    assert cosine(2) == pytest.approx(1.0) and cosine(11) == pytest.approx(0.1) and cosine(50) == pytest.approx(0.1)
    assert cosine(2 + 9 / 2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    linear = lr_factor("linear", warmup_steps=0, total_steps=11, min_lr_ratio=0.0)
    assert [linear(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert {lr_factor("constant", 0, 100, 0.0)(s) for s in range(100)} == {1.0}


def test_the_default_is_the_reference_constant_lr():
    cfg = load_config(TINY_STAGE1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_lr_scheduler(opt, cfg.lr_schedule, total_steps=5)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1e-5] * 5


@pytest.mark.parametrize("option, value", [("lr_schedule.kind", "step"), ("lr_schedule.warmup_steps", -1),
                                           ("lr_schedule.min_lr_ratio", 1.5)])
def test_bad_schedule_settings_are_refused(option, value):
    with pytest.raises(UserError, match=option.replace(".", r"\.")):
        load_config(TINY_STAGE1, cfg_options={option: value})


class Interrupted(Exception):
    pass


def test_a_resumed_run_has_the_lr_sequence_and_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    csv = make_media_csv(tmp_path / "data", num_images=2)
    options = dict(max_steps=6, ckpt_every=3, keep_last_ckpts=5, lr=1e-3, deterministic=True, seed=0,
                   lr_schedule=dict(kind="cosine", warmup_steps=2, min_lr_ratio=0.1))
    straight = Trainer(tiny_train_cfg(1, tmp_path / "straight", csv, **options)).fit()
    lrs = [h["train/lr"] for h in straight.history]
    factor = lr_factor("cosine", 2, 6, 0.1)
    assert lrs == [1e-3 * factor(s) for s in range(6)]

    original = Trainer.train_step

    def dies_at_step_4(self, video, step, *args, **kwargs):
        if step == 4:
            raise Interrupted  # as if killed after the step-3 checkpoint
        return original(self, video, step, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_4)
    with pytest.raises(Interrupted):
        Trainer(tiny_train_cfg(1, tmp_path / "split", csv, **options)).fit()
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = Trainer(tiny_train_cfg(1, tmp_path / "split", csv, load="auto", **options)).fit()
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    assert [h["train/lr"] for h in resumed.history] == lrs[3:]
    for run in ("straight", "split"):
        assert (tmp_path / run / "step_000000006").is_dir()
    weights = "step_000000006/model/model.safetensors"
    assert (tmp_path / "straight" / weights).read_bytes() == (tmp_path / "split" / weights).read_bytes()
