"""Every bad setting is a one-line error (exit 2) before any file is written: value ranges and
choices (issue cases 4 and 9), output locations, and the entry points' shared conventions."""

from __future__ import annotations

import pytest

from tests.helpers import INFER_ENTRY, TINY_INFER, TINY_STAGE1, TRAIN_ENTRY, make_media_csv, run_entry

BAD_TRAIN_VALUES = [
    "grad_clip=-1.0",  # clip_grad_norm_ with max_norm < 0 flips the gradients
    "grad_clip=0.0",
    "max_nonfinite_steps=0",
    "max_steps=-1",
    "max_steps=0",
    "epochs=0",
    "mixed_image_ratio=5.0",
    "max_skip_fraction=-1.0",
    "lr=-1.0",
    "lr=0.0",
    "dataset.num_frames=0",
    "dataset.frame_interval=0",
    "dataset.image_size=[0,0]",
    "dataset.image_size=[64]",
    "dtype=fp16",
    "parallel=xyz",
    "mixed_strategy=foo",
    "dataset.transform_name=foo",
    "num_workers=-1",
    "adam_betas=[2,3]",
    "ema_decay=1.5",
    "ema_decay=0.0",
    "batch_size=0",
    "batch_size=-2",
    "ckpt_every=-1",
    "keep_last_ckpts=0",
    "log_every=0",
    "model.scale=[1.0,0.0,1.0,1.0]",
    "model.spatial.scaling_factor=0.0",
    "use_z_rec_loss=False",  # no main loss left (stage 1 has use_real_rec_loss=False)
    "dataset.image_size=[36,36]",  # not a multiple of the spatial VAE's 8
    "dataset.image_size=[8,8]",  # smaller than the SSIM window (11)
    "ckpt_path=",  # an empty path means a mistake, not "none"
    "load=' '",
    "perceptual_backbone_path=",
    "model.from_pretrained=",
    "model.spatial.from_pretrained=",
]


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return make_media_csv(tmp_path_factory.mktemp("media"), num_images=2)


@pytest.mark.parametrize("option", BAD_TRAIN_VALUES)
def test_bad_train_values_fail_before_any_output(option, data_csv, tmp_path, capsys):
    outputs = tmp_path / "out"
    code = run_entry(TRAIN_ENTRY, [TINY_STAGE1, "--data-path", data_csv, "--outputs", outputs,
                                   "--cfg-options", option])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert option.split("=")[0] in err  # the message names the key
    assert not outputs.exists()


@pytest.mark.parametrize("flag", [["--batch-size", "0"], ["--batch-size", "-1"], ["--lr", "-1"],
                                  ["--batch-size", "50"]])  # larger than the 3-sample table
def test_bad_flags_fail_before_any_output(flag, data_csv, tmp_path, capsys):
    outputs = tmp_path / "out"
    code = run_entry(TRAIN_ENTRY, [TINY_STAGE1, "--data-path", data_csv, "--outputs", outputs, *flag])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert not outputs.exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_outputs_that_is_a_file_fails_before_work(where, data_csv, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    outputs = blocker if where == "file" else blocker / "run"
    code = run_entry(TRAIN_ENTRY, [TINY_STAGE1, "--data-path", data_csv, "--outputs", outputs])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and "Traceback" not in err, err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("option", ["batch_size=0", "num_samples=0", "fps=0.0", "dataset.num_frames=0",
                                    "dataset.image_size=[0,0]", "dtype=fp16", "num_workers=-1",
                                    "dataset.image_size=[68,64]", "dataset.image_size=[8,8]"])
def test_bad_inference_values_fail_before_any_output(option, data_csv, tmp_path, capsys):
    save_dir = tmp_path / "rec"
    code = run_entry(INFER_ENTRY, [TINY_INFER, "--ckpt-path", tmp_path / "no_ckpt", "--data-path", data_csv,
                                   "--save-dir", save_dir, "--cfg-options", option])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and option.split("=")[0] in err, err
    assert not list(tmp_path.glob("rec*"))


@pytest.mark.parametrize("flag", ["--ckpt-path", "--data-path", "--outputs", "--load"])
@pytest.mark.parametrize("value", ["", "  "])
def test_empty_train_path_flags_are_refused(flag, value, data_csv, tmp_path, capsys):
    """`--ckpt-path "$CKPT"` with CKPT unset trained from random weights (exit 0)."""
    outputs = tmp_path / "out"
    args = {"--data-path": data_csv, "--outputs": outputs, flag: value}
    code = run_entry(TRAIN_ENTRY, [TINY_STAGE1, *[x for kv in args.items() for x in kv],
                                   "--cfg-options", "max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {flag} is empty") and "Traceback" not in err, err
    assert not outputs.exists()


@pytest.mark.parametrize("flag", ["--ckpt-path", "--data-path", "--save-dir"])
def test_empty_inference_path_flags_are_refused(flag, data_csv, tmp_path, capsys):
    args = {"--ckpt-path": tmp_path / "no_ckpt", "--data-path": data_csv, "--save-dir": tmp_path / "rec", flag: ""}
    code = run_entry(INFER_ENTRY, [TINY_INFER, *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {flag} is empty"), err
    assert not list(tmp_path.glob("rec*"))


def test_cfg_options_values_are_verbatim(tmp_path):
    from opensora_vae.config import load_config

    cfg = load_config(TINY_STAGE1, cfg_options=[f"outputs={tmp_path}/cfg out", "dataset.data_path=/t/data dir/d.csv",
                                                "model.spatial.subfolder='a b'", "adam_betas=(0.9, 0.99)",
                                                "dataset.image_size=[32, 48]", "max_steps= 6"])
    assert cfg.outputs == f"{tmp_path}/cfg out" and cfg.dataset.data_path == "/t/data dir/d.csv"
    assert cfg.model.spatial.subfolder == "a b" and tuple(cfg.adam_betas) == (0.9, 0.99)
    assert list(cfg.dataset.image_size) == [32, 48] and cfg.max_steps == 6


@pytest.mark.parametrize("value", ["[32,32", "(1,2", "/t/run]"])
def test_unbalanced_bracket_in_a_value_is_one_line(value, data_csv, tmp_path, capsys):
    code = run_entry(TRAIN_ENTRY, [TINY_STAGE1, "--data-path", data_csv, "--outputs", tmp_path / "out",
                                   "--cfg-options", f"dataset.image_size={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "unbalanced" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_nothing_in_an_option_is_executed(tmp_path):
    from opensora_vae.config import ConfigError, load_config

    marker = tmp_path / "ran"
    payload = f"__import__('os').system('touch {marker}')"
    cfg = load_config(TINY_STAGE1, cfg_options=[f"outputs={payload}"])
    assert cfg.outputs == payload
    with pytest.raises(ConfigError):
        load_config(TINY_STAGE1, cfg_options=[f"{payload}=1"])
    assert not marker.exists()


def test_cfg_options_typo_gets_did_you_mean():
    from opensora_vae.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(TINY_STAGE1, cfg_options=["max_step=6", "model.temporal.filterz=8"])
    assert "unknown key 'max_step' in overrides (did you mean 'max_steps'?)" in str(err.value)
    assert "unknown key 'model.temporal.filterz' in overrides (did you mean 'model.temporal.filters'?)" in str(err.value)


def test_unknown_key_message_names_the_file_that_lists_it(tmp_path):
    from opensora_vae.config import ConfigError, load_config

    bad = tmp_path / "typo.py"
    bad.write_text(f'_base_ = ["{TINY_STAGE1}"]\nmodel = dict(temporal=dict(filterz=8))\n')
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "configs/vae/_base_/model_v1_2.py" in str(err.value) and "default_train.py" in str(err.value)


@pytest.mark.parametrize("option", ["model.temporal.num_groups=7", "model.temporal.filters=100000",
                                    "model.shift=[0.0,0.0]", "model.temporal.temporal_downsample=[True]"])
def test_train_model_sizes_are_checked_together(option):
    """The checks a checkpoint's config.json gets (issue 19.10) apply to a train config's model too."""
    from opensora_vae.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=option.split("=")[0].replace(".", r"\.")):
        load_config(TINY_STAGE1, cfg_options=[option])


@pytest.mark.parametrize("option", ["model.temporal.filters=8", "model.spatial.from_pretrained=x/y",
                                    "model.shift=[0.0,0.0,0.0,0.0]", "dataset.max_retries=3"])
def test_inference_keys_that_would_do_nothing_are_refused(option, data_csv, tmp_path, capsys):
    """The architecture and statistics come from the checkpoint and a bad sample is never replaced:
    these keys did nothing (issue 18.3); a key that does nothing is a typo-class error."""
    code = run_entry(INFER_ENTRY, [TINY_INFER, "--ckpt-path", tmp_path / "no_ckpt", "--data-path", data_csv,
                                   "--save-dir", tmp_path / "rec", "--cfg-options", option])
    err = capsys.readouterr().err
    assert code == 2 and f"unknown key '{option.split('=')[0]}'" in err, err


@pytest.mark.parametrize("kind,config,missing", [("train", TINY_STAGE1, ["--data-path"]),
                                                 ("inference", TINY_INFER, ["--data-path", "--ckpt-path"])])
def test_required_keys_are_named_together(kind, config, missing):
    from opensora_vae.config import ConfigError, check_required, load_config

    with pytest.raises(ConfigError) as err:
        check_required(load_config(config, kind=kind), kind)
    assert all(flag in str(err.value) for flag in missing)
