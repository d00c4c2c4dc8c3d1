"""The encode config kind: shipped configs load, export settings are checked before any work."""

import pytest

from opensora_vae.config import ConfigError, load_config
from tests.export.helpers import run_export_entry
from tests.helpers import REPO


@pytest.mark.parametrize("name,frames", [("video", 17), ("image", 1), ("tiny", 17)])
def test_encode_configs_load(name, frames):
    cfg = load_config(REPO / f"configs/vae/encode/{name}.py", kind="encode")
    assert cfg.dataset.num_frames == frames
    assert cfg.export.latent_dtype == "bf16" and cfg.export.whole_video is False


@pytest.mark.parametrize("option,message", [
    ("export.latent_dtype=int8", "'export.latent_dtype' = 'int8': must be one of 'bf16', 'fp16', 'fp32'"),
    ("export.shard_size=0", "'export.shard_size' = 0: must be a number >= 1"),
    ("export.qa_every=-1", "'export.qa_every' = -1: must be a number >= 0"),
    ("export.whole_video=1", "'export.whole_video' = 1 has type int, expected bool"),
    ("export.shards=3", "unknown key 'export.shards'"),
])
def test_bad_export_settings_are_refused(option, message):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs/vae/encode/tiny.py", kind="encode", cfg_options=[option])
    assert message in str(err.value)


# Inference settings the export never reads: setting one is refused, not silently ignored.
NOT_READ = ("fps", "lossless", "save_grid", "overwrite", "sample", "cal_stats", "output_names")


@pytest.mark.parametrize("key", NOT_READ)
def test_inference_only_keys_are_refused(key, tmp_path):
    cfg = load_config(REPO / "configs/vae/encode/tiny.py", kind="encode")
    assert key not in cfg  # not in the export's schema: nothing would read it
    with pytest.raises(ConfigError, match=f"unknown key '{key}' in overrides"):
        load_config(REPO / "configs/vae/encode/tiny.py", kind="encode", cfg_options=[f"{key}=True"])
    own = tmp_path / "own.py"
    own.write_text(f"_base_ = ['{REPO}/configs/vae/encode/tiny.py']\n{key} = True\n")
    with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
        load_config(own, kind="encode")


def test_required_keys_are_named_together_before_any_work():
    from opensora_vae.export import run_export

    cfg = load_config(REPO / "configs/vae/encode/tiny.py", kind="encode")
    with pytest.raises(ConfigError) as err:
        run_export(cfg)
    assert "no data: pass --data-path" in str(err.value) and "no checkpoint: pass --ckpt-path" in str(err.value)


def test_short_videos_are_skipped_and_all_bad_rows_is_an_error(export_inputs, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "long"
    assert run_export_entry(export_inputs, out, "dataset.num_frames=18", "export.qa_every=0") == 0
    status = pd.read_parquet(out / "index.parquet")["status"].tolist()
    assert status[1] == "ok" and status[0] == status[2] == "too short (17 frames < 18 needed for 18 frames at interval 1)"
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nmissing1.mp4\nmissing2.mp4\n")
    assert run_export_entry(dict(export_inputs, csv=bad), tmp_path / "none") == 2
    assert "error: none of the 2 rows of" in capsys.readouterr().err
