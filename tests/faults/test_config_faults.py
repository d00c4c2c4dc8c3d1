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
                                    "dataset.image_size=[0,0]", "dtype=fp16", "num_workers=-1"])
def test_bad_inference_values_fail_before_any_output(option, data_csv, tmp_path, capsys):
    save_dir = tmp_path / "rec"
    code = run_entry(INFER_ENTRY, [TINY_INFER, "--ckpt-path", tmp_path / "no_ckpt", "--data-path", data_csv,
                                   "--save-dir", save_dir, "--cfg-options", option])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and option.split("=")[0] in err, err
    assert not list(tmp_path.glob("rec*"))


def test_empty_save_dir_flag_is_refused(data_csv, tmp_path, capsys):
    code = run_entry(INFER_ENTRY, [TINY_INFER, "--ckpt-path", tmp_path / "no_ckpt", "--data-path", data_csv,
                                   "--save-dir", ""])
    assert code == 2 and "save_dir" in capsys.readouterr().err
