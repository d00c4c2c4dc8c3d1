"""The checkpoint manager owns the training state: a component is one entry of its `states`, and
state that a resumed run would not continue never vanishes silently."""

import pytest
import torch

from opensora_vae.config import load_config
from opensora_vae.training import Trainer
from opensora_vae.training import checkpoint as ckpt_io
from opensora_vae.training.checkpoint import StateWouldVanishError
from tests.helpers import (Value, TINY_STAGE1, checkpoint_manager, make_media_csv, save_step, step_dirs,
                           tiny_train_cfg)


def test_a_new_component_is_two_entries_and_nothing_else(tmp_path, tiny_pipeline):
    """What the adversarial phase needs: a module and its optimizer, saved and restored exactly."""
    cfg = load_config(TINY_STAGE1)
    torch.manual_seed(0)
    disc = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    disc(torch.randn(2, 4)).sum().backward()
    opt.step()
    manager = checkpoint_manager(tmp_path, 2, tiny_pipeline, discriminator=disc, discriminator_optimizer=opt)
    path = save_step(manager, 1, cfg)
    assert {"discriminator", "discriminator_optimizer"} <= ckpt_io.held_entries(path)

    fresh = torch.nn.Linear(4, 1)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    resumed = checkpoint_manager(tmp_path, 2, tiny_pipeline, discriminator=fresh, discriminator_optimizer=fresh_opt)
    assert resumed.start("auto") == path
    assert resumed.restore()
    assert all(torch.equal(a, b) for a, b in zip(disc.state_dict().values(), fresh.state_dict().values()))
    saved, loaded = opt.state_dict()["state"][0], fresh_opt.state_dict()["state"][0]
    assert all(torch.equal(saved[k], loaded[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert resumed.states["counters"].value["global_step"] == 1  # top-level entries get the whole file
    resumed.release()


def test_state_a_resume_would_not_continue_is_refused_unless_dropped(tmp_path, tiny_pipeline):
    cfg = load_config(TINY_STAGE1)
    manager = checkpoint_manager(tmp_path, 5, tiny_pipeline, discriminator=Value({"w": 1}))
    save_step(manager, 1, cfg)
    without = checkpoint_manager(tmp_path, 5, tiny_pipeline)
    without.start("auto")
    with pytest.raises(StateWouldVanishError, match=r"'discriminator'.*drop_state=\[discriminator\]"):
        without.restore()
    assert without.restore(drop=["discriminator"])
    without.release()


def test_pruning_keeps_the_newest_checkpoint_holding_state_that_newer_ones_lack(tmp_path, tiny_pipeline):
    cfg = load_config(TINY_STAGE1)
    first = checkpoint_manager(tmp_path, 1, tiny_pipeline, ema=Value({}))
    for step in (1, 2):
        save_step(first, step, cfg)
    assert step_dirs(tmp_path) == ["step_000000002"]
    second = checkpoint_manager(tmp_path, 1, tiny_pipeline)
    second.start("auto")
    second.restore(drop=["ema"])
    for step in (3, 4, 5):
        save_step(second, step, cfg)
    # step 2 is the last one with ema/: kept, whatever keep_last_ckpts says; the rest rotate.
    assert step_dirs(tmp_path) == ["step_000000002", "step_000000005"]
    assert (tmp_path / "step_000000002" / "ema" / "model.safetensors").is_file()
    second.release()


@pytest.fixture(scope="module")
def media_csv(tmp_path_factory):
    return make_media_csv(tmp_path_factory.mktemp("media"), num_images=2)


def test_an_ema_is_never_lost_on_resume(tmp_path, media_csv):
    """Issue 19.1: a resume without ema_decay continued silently, then pruning deleted every ema/."""
    out = tmp_path / "out"
    Trainer(tiny_train_cfg(1, out, media_csv, max_steps=2, ckpt_every=1, keep_last_ckpts=1,
                           ema_decay=0.5)).fit()
    with pytest.raises(StateWouldVanishError, match=r"'ema'.*--cfg-options ema_decay=.*drop_state=\[ema\]"):
        Trainer(tiny_train_cfg(1, out, media_csv, max_steps=4, ckpt_every=1, keep_last_ckpts=1, load="auto"))
    assert step_dirs(out) == ["step_000000002"]
    # Continued: the EMA goes on from the saved one.
    kept = Trainer(tiny_train_cfg(1, out, media_csv, max_steps=3, ckpt_every=1, keep_last_ckpts=1,
                                  ema_decay=0.5, load="auto"))
    saved = ckpt_io.read_weights(out / "step_000000002" / "ema")
    assert all(torch.equal(t.cpu(), saved[n]) for n, t in kept.ema.shadow.items())
    kept.fit()
    # Dropped on purpose: training goes on, and pruning keeps the newest checkpoint holding ema/.
    Trainer(tiny_train_cfg(1, out, media_csv, max_steps=5, ckpt_every=1, keep_last_ckpts=1, load="auto",
                           drop_state=["ema"])).fit()
    assert step_dirs(out) == ["step_000000003", "step_000000005"]
    assert (out / "step_000000003" / "ema").is_dir() and not (out / "step_000000005" / "ema").exists()


def test_checkpoints_written_before_state_entries_still_resume(tmp_path, media_csv):
    import json

    out = tmp_path / "out"
    Trainer(tiny_train_cfg(1, out, media_csv, max_steps=2, ckpt_every=2, ema_decay=0.5)).fit()
    ckpt = out / "step_000000002"
    # The format before entries: no "entries" in lineage.json, no entries that came later.
    lineage = json.loads((ckpt / "lineage.json").read_text())
    del lineage["entries"]
    (ckpt / "lineage.json").write_text(json.dumps(lineage))
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    for key in ("lr_scheduler", "running_means"):
        del state[key]
    torch.save(state, ckpt / "training_state.pt")
    assert ckpt_io.held_entries(ckpt) == set(ckpt_io.LEGACY_ENTRIES) | {"model", "ema"}

    resumed = Trainer(tiny_train_cfg(1, out, media_csv, max_steps=3, ema_decay=0.5, load="auto"))
    assert resumed.global_step == 2 and resumed.sampler.global_consumed == 2
    saved = ckpt_io.read_weights(ckpt / "ema")
    assert all(torch.equal(t.cpu(), saved[n]) for n, t in resumed.ema.shadow.items())
    assert resumed.lr_scheduler.last_epoch == 0  # started fresh: older code had no schedule
    assert resumed.fit().global_step == 3
