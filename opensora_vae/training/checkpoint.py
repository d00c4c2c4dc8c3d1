"""Training checkpoints on disk: atomic writes, discovery of the newest complete one, pruning.

Layout of `<outputs>/step_{global_step:09d}/`:
- `model/`: `config.json` + `model.safetensors`, the `VideoVAEPipeline.save_pretrained` format
  (loadable by `from_pretrained`, and as `--ckpt-path` of the next stage);
- `ema/`: the same format with the EMA weights, when `ema_decay` is set;
- `training_state.pt`: optimizer, sampler position, every rank's RNG states, counters,
  world size and batch size;
- `config.py`: the resolved config of the run.
Rank 0 writes everything into a hidden temp dir under `<outputs>` and renames it into place, so
a `step_*` dir is either complete or absent; a crash leaves only a temp dir, which is ignored.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from ..models.checkpoint_io import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, write_pipeline_dir

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{9})$")
TMP_PREFIX = ".tmp_"
STATE_NAME = "training_state.pt"
CONFIG_DUMP = "config.py"
FORMAT_VERSION = 1


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def missing_files(ckpt: Path) -> list[str]:
    """Files a complete checkpoint dir must hold that `ckpt` lacks."""
    need = [f"model/{CONFIG_NAME}", f"model/{WEIGHTS_NAME}", STATE_NAME, CONFIG_DUMP]
    missing = [n for n in need if not (ckpt / n).is_file()]
    if not missing and (ckpt / "ema").exists():
        missing += [f"ema/{n}" for n in (CONFIG_NAME, WEIGHTS_NAME) if not (ckpt / "ema" / n).is_file()]
    return missing


def find_latest_checkpoint(outputs: str | Path) -> Path | None:
    """Newest complete `step_*` dir under `outputs`; temp dirs and incomplete dirs are skipped."""
    outputs = Path(outputs)
    if not outputs.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for entry in outputs.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            logger.info("ignoring unfinished checkpoint temp dir %s (a save was interrupted)", entry)
            continue
        match = STEP_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        missing = missing_files(entry)
        if missing:
            logger.warning("ignoring incomplete checkpoint %s (missing %s)", entry, ", ".join(missing))
            continue
        found.append((int(match.group(1)), entry))
    return max(found)[1] if found else None


def resolve_load(load: str | None, outputs: str | Path) -> Path | None:
    """The checkpoint dir to resume from: `None`, an explicit dir, or `"auto"` (newest, or None)."""
    if load is None:
        return None
    if load == "auto":
        latest = find_latest_checkpoint(outputs)
        logger.info("--load auto: %s", f"resuming from {latest}" if latest else
                    f"no complete checkpoint under {outputs}, starting from scratch")
        return latest
    path = Path(load).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"--load {load}: no such checkpoint directory")
    missing = missing_files(path)
    if missing:
        raise CheckpointError(f"--load {load}: not a complete training checkpoint (missing "
                              f"{', '.join(missing)}); expected a <outputs>/step_XXXXXXXXX dir")
    return path


def dump_config(cfg: Config, path: Path) -> None:
    """The resolved config as a Python file that `load_config` reads back."""
    data = cfg.to_dict()
    data.pop("config_path", None)  # bookkeeping added by load_config, not a schema key
    Config(data).dump(str(path))


def write_checkpoint(outputs: str | Path, step: int, pipeline_config: dict,
                     model_state: dict[str, torch.Tensor], training_state: dict[str, Any],
                     cfg: Config, ema_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Rank 0 only: writes `<outputs>/step_{step:09d}` atomically and returns it."""
    outputs = Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    final = outputs / step_dir_name(step)
    tmp = outputs / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    write_pipeline_dir(tmp / "model", pipeline_config, model_state)
    if ema_state is not None:
        write_pipeline_dir(tmp / "ema", pipeline_config, ema_state)
    torch.save({"format_version": FORMAT_VERSION, **training_state}, tmp / STATE_NAME)
    dump_config(cfg, tmp / CONFIG_DUMP)
    old = None
    if final.exists():  # same step saved by an earlier run into these outputs: replace it
        old = outputs / f"{TMP_PREFIX}old_{final.name}.{os.getpid()}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def prune_checkpoints(outputs: str | Path, keep: int | None) -> list[Path]:
    """Deletes all but the newest `keep` complete `step_*` dirs; returns the deleted ones."""
    if keep is None or keep <= 0:
        return []
    steps = sorted((int(m.group(1)), p) for p in Path(outputs).iterdir()
                   if (m := STEP_DIR.match(p.name)) and p.is_dir() and not missing_files(p))
    doomed = [p for _, p in steps[:-keep]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed old checkpoint %s (keep_last_ckpts=%d)", path, keep)
    return doomed


def read_training_state(ckpt: Path) -> dict[str, Any]:
    try:
        state = torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read {ckpt / STATE_NAME}: {err}") from err
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt / STATE_NAME} has format {state.get('format_version')}, "
                              f"this code reads format {FORMAT_VERSION}")
    return state


def read_weights(save_dir: Path) -> dict[str, torch.Tensor]:
    from ..models.checkpoint_io import load_state_dict_file

    return load_state_dict_file(save_dir / WEIGHTS_NAME)
