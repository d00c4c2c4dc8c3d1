"""Configs carry the reference recipe; typos and wrong types fail before any work starts."""


import pytest

from opensora_vae.config import ConfigError, load_config

from tests.helpers import REPO, child_env
TRAIN = REPO / "configs/vae/train"


@pytest.mark.parametrize("stage,frames,freeze,real,zrec,ident,mix", [
    (1, 17, True, False, True, True, "mixed_video_image"),
    (2, 17, False, False, True, False, "mixed_video_image"),
    (3, 33, False, True, False, False, "mixed_video_random"),
])
def test_stage_recipes(stage, frames, freeze, real, zrec, ident, mix):
    cfg = load_config(TRAIN / f"stage{stage}.py")
    assert cfg.dataset.num_frames == frames and tuple(cfg.dataset.image_size) == (256, 256)
    assert cfg.model.freeze_spatial is freeze
    assert (cfg.use_real_rec_loss, cfg.use_z_rec_loss, cfg.use_image_identity_loss) == (real, zrec, ident)
    assert cfg.mixed_strategy == mix
    assert (cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.batch_size, cfg.seed) == (1e-5, 0.0, 1.0, 1, 42)
    assert (cfg.ckpt_every, cfg.dtype, cfg.perceptual_loss_weight, cfg.kl_loss_weight) == (1000, "bf16", 0.1, 1e-6)
    assert cfg.model.spatial.scaling_factor == 0.18215 and cfg.model.micro_frame_size == 17
    if mix == "mixed_video_image":
        assert cfg.mixed_image_ratio == 0.2


# What configs/vae/train/tiny/sizes.py sets (plus each stage's run folder).
SIZE_KEYS = {"model", "num_workers", "dtype", "grad_checkpoint", "ckpt_every", "preview_every", "outputs",
             "config_path"}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_tiny_stage_is_the_same_recipe(stage):
    full = load_config(TRAIN / f"stage{stage}.py").to_dict()
    tiny = load_config(TRAIN / f"tiny/stage{stage}.py").to_dict()
    for key in full:
        if key in SIZE_KEYS:
            continue
        if key == "dataset":
            assert {k: v for k, v in tiny[key].items() if k != "image_size"} == \
                {k: v for k, v in full[key].items() if k != "image_size"}
        else:
            assert tiny[key] == full[key], key
    assert tiny["model"]["freeze_spatial"] == full["model"]["freeze_spatial"]
    assert tiny["model"]["micro_frame_size"] == full["model"]["micro_frame_size"]
    # the recipe file is the base; the sizes come from the one shared file
    from mmengine.config import Config
    sizes = Config.fromfile(str(TRAIN / "tiny/sizes.py")).to_dict()
    assert set(sizes) | {"outputs", "config_path"} == SIZE_KEYS | {"dataset"}
    assert tiny["model"]["temporal"] == {**full["model"]["temporal"], **sizes["model"]["temporal"]}
    assert tiny["dataset"]["image_size"] == sizes["dataset"]["image_size"]


def test_inference_configs():
    for name, frames in (("video", 17), ("image", 1)):
        cfg = load_config(REPO / f"configs/vae/inference/{name}.py", kind="inference")
        assert cfg.dataset.num_frames == frames and cfg.ckpt_path == "hpcai-tech/OpenSora-VAE-v1.2"


def test_cli_and_cfg_options_override():
    cfg = load_config(TRAIN / "stage1.py", cfg_options=["lr=3e-4", "model.temporal.filters=64",
                                                        "dataset.image_size=[128,128]"],
                      cli={"data_path": "data.csv", "batch_size": 4, "load": None})
    assert cfg.lr == 3e-4 and cfg.model.temporal.filters == 64 and list(cfg.dataset.image_size) == [128, 128]
    assert cfg.dataset.data_path == "data.csv" and cfg.batch_size == 4 and cfg.load is None


@pytest.mark.parametrize("options,message", [
    (["lrr=1e-4"], "unknown key 'lrr'"),
    (["model.temporal.filterz=8"], "unknown key 'model.temporal.filterz'"),
    (["lr=fast"], "'lr' = 'fast' has type str"),
    (["use_real_rec_loss=1"], "'use_real_rec_loss' = 1 has type int"),
    (["no_equals_sign"], "expects key=value"),
])
def test_bad_overrides_fail_clearly(options, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(TRAIN / "stage1.py", cfg_options=options)


def test_typo_in_config_file_fails_clearly(tmp_path):
    bad = tmp_path / "typo.py"
    bad.write_text(f'_base_ = ["{TRAIN / "stage1.py"}"]\nckpt_evry = 10\ndataset = dict(num_frame=9)\n')
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "unknown key 'ckpt_evry' (did you mean 'ckpt_every'?)" in str(err.value)
    assert "unknown key 'dataset.num_frame'" in str(err.value)
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.py")


def test_an_installed_package_loads_configs_without_a_checkout(tmp_path):
    """setup.py ships configs/vae (the schema in _base_/, stage and inference configs) as
    opensora_vae/configs: built as pip builds it, imported from elsewhere, configs load and are
    checked against the schema (issue 18.5)."""
    import json
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "setup.py", src)
    for name in ("opensora_vae", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "site")],
                   cwd=src, check=True, capture_output=True)
    shutil.rmtree(src)  # no checkout left to fall back on
    code = """
import json, sys
from opensora_vae import config
cfg = config.load_config(config.CONFIG_DIR / "train/tiny/stage1.py", cfg_options=["max_steps=3"])
mine = sys.argv[1]
open(mine, "w").write(f'_base_ = ["{config.CONFIG_DIR}/train/stage2.py"]\\nmax_step = 3\\n')
try:
    config.load_config(mine)
    refused = ""
except config.ConfigError as err:
    refused = str(err)
shipped = {path: config.load_config(config.CONFIG_DIR / path, kind=kind).dataset.num_frames
           for kind, path in (("inference", "inference/video.py"), ("encode", "encode/video.py"),
                              ("encode", "encode/image.py"))}
print(json.dumps({"file": config.__file__, "dir": str(config.CONFIG_DIR), "max_steps": cfg.max_steps,
                  "size": list(cfg.dataset.image_size), "refused": refused, "shipped": shipped,
                  "released": config.released_checkpoint()}))
"""
    env = child_env(PYTHONPATH=str(tmp_path / "site"))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "mine.py")], cwd=tmp_path, env=env,
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(tmp_path / "site")) and result["dir"] == str(tmp_path / "site/opensora_vae/configs")
    assert result["max_steps"] == 3 and result["size"] == [64, 64]
    assert "unknown key 'max_step' (did you mean 'max_steps'?)" in result["refused"]
    assert result["released"] == "hpcai-tech/OpenSora-VAE-v1.2"
    # the inference and encode configs ship too
    assert result["shipped"] == {"inference/video.py": 17, "encode/video.py": 17, "encode/image.py": 1}


def test_results_md_cites_tests_that_exist():
    """benchmarks/RESULTS.md cited tests/test_train_stage3.py, which did not exist (issue 18.8)."""
    import re

    text = (REPO / "benchmarks" / "RESULTS.md").read_text()
    cited = re.findall(r"tests/[\w/]+\.py(?:::\w+)?", text)
    assert cited
    for ref in cited:
        path, _, name = ref.partition("::")
        assert (REPO / path).is_file(), ref
        assert not name or re.search(rf"def {name}\b", (REPO / path).read_text()), ref
