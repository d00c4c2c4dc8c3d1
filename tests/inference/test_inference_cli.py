"""The entry script end to end: plain python, torchrun with 2 ranks (sharded), and its errors."""

import json
import subprocess
import sys

import av
import numpy as np
import pytest

from tests.helpers import INFER_ENTRY, REPO, TINY_INFER, build_tiny_pipeline, child_env
from opensora_vae.config import load_config
from opensora_vae.inference import run_inference

SCRIPT = INFER_ENTRY
CONFIG = TINY_INFER


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    build_tiny_pipeline(seed=5).save_pretrained(root / "step_000000004" / "model")
    csv = root / "data.csv"
    csv.write_text("path\nassets/media/city_cc0_256_17f.mp4\nmissing.mp4\nassets/media/city_cc0_0-99.mp4\n"
                   .replace("assets/", f"{REPO}/assets/"))
    return root, csv


def run_script(args, launcher=(sys.executable,)):
    return subprocess.run([*launcher, str(SCRIPT), str(CONFIG), *map(str, args)], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=120)


def test_python_entry_writes_h264_and_summary(setup):
    root, csv = setup
    proc = run_script(["--ckpt-path", root / "step_000000004", "--data-path", csv, "--save-dir", root / "py",
                       "--num-samples", 2, "--cfg-options", "cal_stats=True"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (root / "py_rec").iterdir()) == ["000.mp4"]  # row 1 is missing
    with av.open(str(root / "py_rec" / "000.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 24
    report = json.loads((root / "py_metrics.json").read_text())
    assert report["num_rows"] == 2 and report["num_skipped"] == 1 and len(report["latent_stats"]["scale"]) == 4
    assert [s["index"] for s in report["skipped"]] == [1] and "file not found" in report["skipped"][0]["reason"]
    assert [s["index"] for s in report["samples"]] == [0] and np.isfinite(report["samples"][0]["rec"]["psnr"])


def test_torchrun_two_ranks_shard_and_merge(setup):
    root, csv = setup
    cli = {"ckpt_path": str(root / "step_000000004"), "data_path": str(csv), "save_dir": str(root / "one")}
    run_inference(load_config(CONFIG, kind="inference", cfg_options={"lossless": True}, cli=cli), verbose=False)
    multi = run_script(["--ckpt-path", root / "step_000000004", "--data-path", csv, "--cfg-options",
                        "lossless=True", "--save-dir", root / "two"],
                       launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nnodes=1", "--nproc_per_node=2"))
    assert multi.returncode == 0, multi.stderr
    one, two = (json.loads((root / f"{n}_metrics.json").read_text()) for n in ("one", "two"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert [s["name"] for s in two["samples"]] == [s["name"] for s in one["samples"]] == ["000", "002"]
    assert two["skipped"] == one["skipped"]
    for a, b in zip(one["samples"], two["samples"]):
        assert b["rec"]["psnr"] == pytest.approx(a["rec"]["psnr"], abs=1e-2)  # thread counts differ
    assert sorted(p.name for p in (root / "two_ori").iterdir()) == ["000.mp4", "002.mp4"]


def test_entry_errors_exit_2_with_a_message(setup, tmp_path):
    root, csv = setup
    proc = run_script(["--ckpt-path", tmp_path / "nothing", "--data-path", csv, "--save-dir", tmp_path / "x"])
    assert proc.returncode == 2 and "error:" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_shows_the_usage_example_as_written(capsys):
    from tests.helpers import load_script

    with pytest.raises(SystemExit) as exit_info:
        load_script(SCRIPT).parse_args(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    # The continuation line stays a line: no backslash-newline joined into a run of spaces.
    assert "configs/vae/inference/video.py \\\n        --ckpt-path CKPT" in out
