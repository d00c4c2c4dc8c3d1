"""The trainer in-process (single rank, CPU, tiny model): what each stage trains, guarded steps,
skipped samples, previews, and resuming with another batch size."""

import logging

import pytest
import torch

from tests.helpers import build_tiny_pipeline
from opensora_vae.models import VideoVAEPipeline
from opensora_vae.errors import UserError
from opensora_vae.training import EMA, Trainer, TrainingAborted
from opensora_vae.training import trainer as trainer_mod
from tests.helpers import make_media_csv, tiny_train_cfg


@pytest.fixture(scope="module")
def media_csv(tmp_path_factory):
    return make_media_csv(tmp_path_factory.mktemp("media"), num_images=2)


def _initial_weights(tmp_path, **overrides):
    pipe = build_tiny_pipeline(seed=3, **overrides)
    pipe.save_pretrained(tmp_path / "init")
    return str(tmp_path / "init"), {k: v.clone() for k, v in pipe.state_dict().items()}


def _split(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def test_stage1_trains_only_the_temporal_vae_and_adds_identity_on_image_steps(tmp_path, media_csv):
    init, before = _initial_weights(tmp_path)
    # seed 0 draws frame counts [1, 17, 1] for steps 1-3 (mixed_video_image, p=0.2).
    cfg = tiny_train_cfg(1, tmp_path / "out", media_csv, max_steps=3, seed=0, ema_decay=0.5)
    cfg.ckpt_path = init
    result = Trainer(cfg).fit()
    frames = [h["num_frames"] for h in result.history]
    assert frames == [1, 17, 1]
    for h in result.history:
        assert ("loss/identity" in h) == (h["num_frames"] == 1) and "loss/z_rec" in h
        assert "loss/pixel_l1" not in h and "loss/perceptual" not in h
        parts = sum(v for k, v in h.items() if k.startswith("loss/") and k != "loss/loss")
        assert h["loss/loss"] == pytest.approx(parts, rel=1e-6)
    after = VideoVAEPipeline.from_pretrained(result.last_checkpoint / "model").state_dict()
    spatial = _split(before, "spatial_vae.")
    assert spatial and all(torch.equal(after[k], v) for k, v in spatial.items())  # bit for bit
    temporal = [k for k in _split(before, "temporal_vae.") if k.endswith(".weight")]
    changed = [k for k in temporal if not torch.equal(after[k], before[k])]
    assert len(changed) == len(temporal)
    ema = VideoVAEPipeline.from_pretrained(result.last_checkpoint / "ema").state_dict()
    assert all(torch.equal(ema[k], v) for k, v in spatial.items())
    assert any(not torch.equal(ema[k], after[k]) for k in temporal)


def test_stage2_freezes_the_spatial_decoder_that_no_loss_reaches(tmp_path, media_csv, caplog):
    init, before = _initial_weights(tmp_path, freeze_spatial=False)
    cfg = tiny_train_cfg(2, tmp_path / "out", media_csv, max_steps=2, seed=0)
    cfg.ckpt_path = init
    with caplog.at_level(logging.INFO):
        result = Trainer(cfg).fit()
    assert "frozen (no active loss reaches them): spatial_vae.module.decoder" in caplog.text
    assert all("loss/identity" not in h for h in result.history)  # step 1 is a 1-frame step
    after = VideoVAEPipeline.from_pretrained(result.last_checkpoint / "model").state_dict()
    decoder = _split(before, "spatial_vae.module.decoder.")
    assert decoder and all(torch.equal(after[k], v) for k, v in decoder.items())
    encoder = [k for k in _split(before, "spatial_vae.module.encoder.") if k.endswith("weight")]
    assert all(not torch.equal(after[k], before[k]) for k in encoder)  # the encoder does train


def _nan_on_calls(monkeypatch, calls):
    from opensora_vae.losses import VAELoss

    original = VAELoss.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        count["n"] += 1
        terms = original(self, *args, **kwargs)
        if calls == "all" or count["n"] in calls:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(VAELoss, "forward", forward)


def test_non_finite_loss_skips_the_update_and_training_continues(tmp_path, media_csv, monkeypatch, caplog):
    _nan_on_calls(monkeypatch, {2})
    cfg = tiny_train_cfg(1, tmp_path / "out", media_csv, max_steps=3, ckpt_every=1, keep_last_ckpts=5)
    with caplog.at_level(logging.WARNING):
        result = Trainer(cfg).fit()
    skipped = [h["train/update_skipped"] for h in result.history]
    assert skipped == [0.0, 1.0, 0.0]
    assert "loss/loss" not in result.history[1] and "loss/loss" in result.history[2]
    assert "step 2: non-finite loss or gradient norm, update skipped (1 in a row)" in caplog.text
    weights = [VideoVAEPipeline.from_pretrained(tmp_path / "out" / f"step_00000000{s}" / "model").state_dict()
               for s in (1, 2, 3)]
    key = "temporal_vae.encoder.conv_in.conv.weight"
    assert torch.equal(weights[0][key], weights[1][key]) and not torch.equal(weights[1][key], weights[2][key])


def test_repeated_non_finite_losses_abort_with_a_clear_message(tmp_path, media_csv, monkeypatch):
    _nan_on_calls(monkeypatch, "all")
    cfg = tiny_train_cfg(1, tmp_path / "out", media_csv, max_steps=10, max_nonfinite_steps=3)
    with pytest.raises(TrainingAborted, match="non-finite for 3 consecutive steps"):
        Trainer(cfg).fit()
    assert not list((tmp_path / "out").glob("step_*"))


def test_unreadable_samples_are_counted_then_abort_past_the_allowed_fraction(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "broken.mp4").write_text("not a video")
    csv = make_media_csv(folder, num_images=2, videos=(), extra_rows=["broken.mp4", "missing.png"])
    monkeypatch.setattr(trainer_mod, "MIN_ATTEMPTS_FOR_SKIP_CHECK", 4)
    cfg = tiny_train_cfg(1, tmp_path / "ok", csv, max_steps=6, max_skip_fraction=0.9)
    with caplog.at_level(logging.WARNING):
        result = Trainer(cfg).fit()
    last = result.history[-1]
    assert last["data/skipped_total"] > 0
    assert caplog.text.count("unreadable sample skipped (rank 0): " + str(folder / "broken.mp4")) == 1
    cfg = tiny_train_cfg(1, tmp_path / "abort", csv, max_steps=20, max_skip_fraction=0.05)
    with pytest.raises(TrainingAborted, match=r"sample reads failed \(> max_skip_fraction=0.05\)") as err:
        Trainer(cfg).fit()
    assert "broken.mp4" in str(err.value) or "missing.png" in str(err.value)


def test_resume_with_another_batch_size_continues_at_the_same_global_sample(tmp_path, caplog):
    csv = make_media_csv(tmp_path / "data", num_images=6, videos=())
    out = tmp_path / "out"
    first = Trainer(tiny_train_cfg(1, out, csv, max_steps=2, batch_size=2)).fit()
    seen = [i for h in first.history for i in h["indices"]]
    cfg = tiny_train_cfg(1, out, csv, max_steps=4, batch_size=1, load="auto")
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg)
    assert "resuming with world size 1 / batch size 1 (checkpoint: 1 / 2)" in caplog.text
    order = trainer.sampler.global_order(0).tolist()
    assert seen == order[:4]
    second = trainer.fit()
    assert [h["step"] for h in second.history] == [3, 4]
    assert [h["indices"] for h in second.history] == [[order[4]], [order[5]]]


def test_next_stage_starts_from_weights_and_refuses_to_resume_another_stage(tmp_path, media_csv):
    from opensora_vae.models import CheckpointError

    out1 = tmp_path / "stage1"
    stage1 = Trainer(tiny_train_cfg(1, out1, media_csv, max_steps=1)).fit()
    with pytest.raises(CheckpointError, match="trained a different set of parameters.*use --ckpt-path"):
        Trainer(tiny_train_cfg(2, out1, media_csv, max_steps=2, load="auto"))
    # --ckpt-path takes the step dir itself (its model/ subdir) as initial weights only.
    cfg = tiny_train_cfg(2, tmp_path / "stage2", media_csv, max_steps=1, ckpt_path=str(stage1.last_checkpoint))
    trainer = Trainer(cfg)
    start = VideoVAEPipeline.from_pretrained(stage1.last_checkpoint / "model").state_dict()
    assert all(torch.equal(v.cpu(), start[k]) for k, v in trainer.pipe.state_dict().items())
    assert trainer.global_step == 0 and trainer.fit().global_step == 1


def test_preview_shows_input_and_reconstruction_of_the_first_frame(tmp_path, media_csv, monkeypatch):
    from opensora_vae.training.logging import TrainLogger

    previews = []
    monkeypatch.setattr(TrainLogger, "log_preview", lambda self, step, image: previews.append((step, image)))
    cfg = tiny_train_cfg(1, tmp_path / "out", media_csv, max_steps=4, preview_every=2, seed=0)
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert [s for s, _ in previews] == [2, 4]
    step4 = result.history[3]
    clip, _ = trainer.dataset.load(step4["indices"][0])  # the same pixels in every epoch here
    image = previews[1][1]
    assert image.shape == (3, 32, 64) and 0 <= image.min() and image.max() <= 1
    assert torch.allclose(image[:, :, :32], (clip[:, 0] + 1) / 2, atol=1e-6)
    assert not torch.allclose(image[:, :, 32:], image[:, :, :32], atol=1e-2)  # an untrained recon
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))


def test_no_data_path_fails_before_training(tmp_path, media_csv):
    # Value ranges and choices are the config's (tests/faults/test_config_faults.py).
    cfg = tiny_train_cfg(1, tmp_path / "out", media_csv)
    cfg.dataset.data_path = None
    with pytest.raises(UserError, match="pass --data-path"):
        Trainer(cfg)
    assert not (tmp_path / "out").exists()


def test_wandb_without_the_package_is_a_clear_error(tmp_path, media_csv):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(UserError, match="'wandb' package is not installed"):
        Trainer(tiny_train_cfg(1, tmp_path / "out", media_csv, wandb=True))


def test_grad_checkpoint_setting_reaches_the_temporal_vae(tmp_path, media_csv):
    trainer = Trainer(tiny_train_cfg(1, tmp_path / "out", media_csv, grad_checkpoint=True, max_steps=1))
    assert trainer.pipe.temporal_vae.encoder.gradient_checkpointing
    assert trainer.pipe.temporal_vae.decoder.gradient_checkpointing
    result = trainer.fit()
    assert result.history[0]["loss/loss"] > 0


def test_ema_is_the_exponential_moving_average_of_trained_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].requires_grad_(False)
    ema = EMA(model, decay=0.9)
    assert ema.names == ["0.weight", "0.bias"]
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["0.weight"], start + 0.1)
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(model, decay=1.0)


def test_a_frozen_random_spatial_vae_is_warned_about(tmp_path, media_csv, caplog):
    with caplog.at_level(logging.WARNING):
        Trainer(tiny_train_cfg(1, tmp_path / "out", media_csv, max_steps=1)).close()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "RANDOM WEIGHTS" in r.getMessage()]
    assert len(warned) == 1
    init, _ = _initial_weights(tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Trainer(tiny_train_cfg(1, tmp_path / "out2", media_csv, max_steps=1, ckpt_path=init)).close()
    assert not [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]


def test_log_lines_carry_a_running_mean_and_an_eta(tmp_path):
    from opensora_vae.training.logging import TrainLogger, format_duration

    log = TrainLogger(tmp_path, enabled=True, total_steps=10, initial_step=0, log_every=1)
    try:
        for step, loss in enumerate([4.0, 2.0, 6.0], start=1):
            log.log_step(step, {"loss/loss": loss})
        assert log.running_mean("loss/loss") == pytest.approx(4.0)
        eta = log.eta_seconds(3)
        assert eta is not None and eta >= 0
    finally:
        log.close()
    assert [format_duration(s) for s in (None, 5, 65, 3725)] == ["?", "5s", "1m05s", "1h02m"]


def test_a_resumed_run_tells_tensorboard_to_drop_the_steps_it_repeats(tmp_path, media_csv):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = tmp_path / "out"
    Trainer(tiny_train_cfg(1, out, media_csv, max_steps=4, ckpt_every=2)).fit()
    import shutil

    shutil.rmtree(out / "step_000000004")  # as if the run died after logging steps 3 and 4
    Trainer(tiny_train_cfg(1, out, media_csv, max_steps=4, ckpt_every=2, load="auto")).fit()
    files = sorted((out / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    starts = [e.step for e in EventFileLoader(str(files[1])).Load()
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [3]  # TensorBoard purges the first run's steps >= 3


def test_the_trainer_adds_its_log_file_and_keeps_the_callers_logging(tmp_path, media_csv):
    from opensora_vae.cli import setup_logging

    setup_logging()  # what the entry script did before building the Trainer
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        Trainer(tiny_train_cfg(1, tmp_path / "out", media_csv, max_steps=1)).close()
        assert all(h in root.handlers for h in before)  # logging was not set up a second time
        added = [h for h in root.handlers if h not in before]
        assert [type(h) for h in added] == [logging.FileHandler]
        assert added[0].baseFilename == str(tmp_path / "out" / "train.log")
    finally:
        setup_logging()  # drops the file handler again


def test_the_running_mean_continues_after_a_resume(tmp_path, media_csv):
    """Issue 23.7: the log's `mean(last N)` restarted at each resume."""
    options = dict(ckpt_every=2, seed=0, deterministic=True)
    straight = Trainer(tiny_train_cfg(1, tmp_path / "a", media_csv, max_steps=4, **options))
    straight.fit()
    Trainer(tiny_train_cfg(1, tmp_path / "b", media_csv, max_steps=2, **options)).fit()
    resumed = Trainer(tiny_train_cfg(1, tmp_path / "b", media_csv, max_steps=4, load="auto", **options))
    assert resumed.running_means.count("loss/loss") == 2  # steps 1 and 2, from the checkpoint
    resumed.fit()
    means = straight.running_means.state_dict()
    assert len(means["loss/loss"]) == 4
    assert resumed.running_means.state_dict().keys() == means.keys()
    for name, values in means.items():
        assert resumed.running_means.state_dict()[name] == pytest.approx(values, rel=1e-6), name


def test_per_step_structures_stay_the_same_size_however_long_the_run(tmp_path, monkeypatch):
    """Issue 24: a 540k-step run must end with the memory it had after warm-up."""
    from opensora_vae.training import logging as train_logging
    from opensora_vae.training.logging import TrainLogger

    folder = tmp_path / "data"
    bad = [f"missing{i}.png" for i in range(120)]
    csv = make_media_csv(folder, num_images=2, videos=())
    good = csv.read_text().splitlines()[1:]
    # every third row readable: each step reads one or more distinct unreadable files
    rows = [r for i in range(40) for r in (good[i % 2], bad[2 * i], bad[2 * i + 1])]
    csv.write_text("path\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(trainer_mod, "HISTORY_LIMIT", 3)
    monkeypatch.setattr(train_logging, "SKIP_MEMORY", 3)
    monkeypatch.setattr(TrainLogger, "RUNNING_WINDOW", 3)

    def sizes(steps):
        cfg = tiny_train_cfg(1, tmp_path / f"out{steps}", csv, max_steps=steps, ckpt_every=2, keep_last_ckpts=1,
                             max_skip_fraction=1.0, seed=0)
        trainer = Trainer(cfg)
        result = trainer.fit()
        assert result.global_step == steps and trainer.counters.skipped_total >= 6
        return (len(result.history), len(trainer.skips.warned), len(trainer.skips.examples),
                len(trainer.checkpoints.written), trainer.running_means.count("loss/loss"))

    assert sizes(8) == sizes(32) == (3, 3, 5, 1, 3)
