"""Training checkpoints on disk, and the `CheckpointManager` that owns a run's `<outputs>` folder.

Layout of `<outputs>/step_{global_step:09d}/`:
- `model/`: `config.json` + `model.safetensors`, the `VideoVAEPipeline.save_pretrained` format
  (loadable by `from_pretrained`, and as `--ckpt-path` of the next stage);
- `ema/`: the same format with the EMA weights, when `ema_decay` is set;
- `training_state.pt`: optimizer, sampler position, every rank's RNG states, counters,
  world size and batch size (plus the lineage below);
- `config.py`: the resolved config of the run;
- `lineage.json`: `{"run_id", "lineage", "step"}`: which run wrote it, and the runs it resumed
  from (checkpoints written before lineage existed have none and are never pruned).
Rank 0 writes everything into a hidden temp dir under `<outputs>` and renames it into place, so
a `step_*` dir is either complete or absent; a crash leaves only a temp dir, never loadable.

`<outputs>/.lock` is held (flock) by the run that owns the folder for its whole life; the kernel
releases it when that process ends however it ends, so a lock left by a dead run never blocks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from ..errors import OutputExistsError, UserError
from ..models.checkpoint_io import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, write_pipeline_dir

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{9})$")
TMP_PREFIX = ".tmp_"
STATE_NAME = "training_state.pt"
CONFIG_DUMP = "config.py"
LINEAGE_NAME = "lineage.json"
LOCK_NAME = ".lock"
FORMAT_VERSION = 1
# Headroom over the bytes of the tensors: safetensors/torch.save headers, the config, the filesystem.
SPACE_MARGIN = 1.05


class OutputsInUseError(UserError):
    """Another live run holds the outputs folder's lock."""


class DiskFullError(UserError, OSError):
    """A checkpoint did not fit on the disk; nothing older was removed."""


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def missing_files(ckpt: Path) -> list[str]:
    """Files a complete checkpoint dir must hold that `ckpt` lacks."""
    need = [f"model/{CONFIG_NAME}", f"model/{WEIGHTS_NAME}", STATE_NAME, CONFIG_DUMP]
    missing = [n for n in need if not (ckpt / n).is_file()]
    if not missing and (ckpt / "ema").exists():
        missing += [f"ema/{n}" for n in (CONFIG_NAME, WEIGHTS_NAME) if not (ckpt / "ema" / n).is_file()]
    return missing


def complete_checkpoints(outputs: str | Path, warn: bool = False) -> list[tuple[int, Path]]:
    """(step, dir) of every complete `step_*` dir under `outputs`, oldest first."""
    outputs = Path(outputs)
    if not outputs.is_dir():
        return []
    found = []
    for entry in outputs.iterdir():
        match = STEP_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        missing = missing_files(entry)
        if missing:
            if warn:
                logger.warning("ignoring incomplete checkpoint %s (missing %s)", entry, ", ".join(missing))
            continue
        found.append((int(match.group(1)), entry))
    return sorted(found)


def find_latest_checkpoint(outputs: str | Path) -> Path | None:
    """Newest complete `step_*` dir under `outputs`; temp dirs and incomplete dirs are skipped."""
    found = complete_checkpoints(outputs, warn=True)
    return found[-1][1] if found else None


def read_lineage(ckpt: Path) -> list[str] | None:
    """The run ids that led to `ckpt` (its writer last), None for checkpoints without lineage."""
    try:
        data = json.loads((ckpt / LINEAGE_NAME).read_text())
        lineage = data["lineage"]
        return [str(x) for x in lineage] if isinstance(lineage, list) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def dump_config(cfg: Config, path: Path) -> None:
    """The resolved config as a Python file that `load_config` reads back."""
    data = cfg.to_dict()
    data.pop("config_path", None)  # bookkeeping added by load_config, not a schema key
    Config(data).dump(str(path))


def tensor_bytes(*states: dict | None) -> int:
    """Bytes of all tensors in (nested) state dicts: what a checkpoint needs on disk, about."""
    def walk(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v) for v in obj)
        return 0
    return sum(walk(s) for s in states if s is not None)


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MB"


def write_checkpoint(outputs: str | Path, step: int, pipeline_config: dict,
                     model_state: dict[str, torch.Tensor], training_state: dict[str, Any],
                     cfg: Config, ema_state: dict[str, torch.Tensor] | None = None,
                     lineage: list[str] | None = None) -> Path:
    """Rank 0 only: writes `<outputs>/step_{step:09d}` atomically and returns it.

    A disk that cannot hold it is refused before writing (DiskFullError, with the sizes); a write
    that fails anyway removes its partial temp dir. An existing dir of the same step is replaced
    only after the new one is complete.
    """
    outputs = Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    final = outputs / step_dir_name(step)
    needed = tensor_bytes(model_state, training_state, ema_state) * SPACE_MARGIN
    free = shutil.disk_usage(outputs).free
    if needed > free:
        raise DiskFullError(errno.ENOSPC, f"no space left on device for checkpoint {final.name} in {outputs}: "
                            f"needed ~{_mb(needed)}, free {_mb(free)}; free some space (older "
                            f"checkpoints were kept) or lower keep_last_ckpts, then resume with --load auto")
    tmp = outputs / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        write_pipeline_dir(tmp / "model", pipeline_config, model_state)
        if ema_state is not None:
            write_pipeline_dir(tmp / "ema", pipeline_config, ema_state)
        torch.save({"format_version": FORMAT_VERSION, **training_state}, tmp / STATE_NAME)
        dump_config(cfg, tmp / CONFIG_DUMP)
        if lineage is not None:
            (tmp / LINEAGE_NAME).write_text(json.dumps({"run_id": lineage[-1], "lineage": lineage,
                                                        "step": step}) + "\n")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial temp dir only keeps the disk full
        free = shutil.disk_usage(outputs).free
        out_of_space = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or free < needed
        if out_of_space:
            raise DiskFullError(errno.ENOSPC, f"no space left on device while writing checkpoint {final.name} "
                                f"in {outputs}: needed ~{_mb(needed)}, free {_mb(free)}; the partial "
                                "checkpoint was removed and older ones were kept") from err
        raise
    old = None
    if final.exists():  # same step saved earlier into these outputs: replace it once the new one is whole
        old = outputs / f"{TMP_PREFIX}old_{final.name}.{os.getpid()}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


class CheckpointManager:
    """Owns `<outputs>`: its lock, choosing what to resume, saving, and pruning old step dirs.

    Rank 0 does the file work; the others only hold the same settings. Pruning removes only
    checkpoints of this run's lineage (the run ids it resumed through), and never those newer
    than the step it resumed from that it did not write itself, so a rollback or a second run
    never deletes another run's checkpoints.
    """

    def __init__(self, outputs: str | Path, keep_last: int | None, is_main: bool = True):
        self.outputs = Path(outputs)
        self.keep_last = keep_last
        self.is_main = is_main
        self.lineage: list[str] = [uuid.uuid4().hex]
        self.resume_step = 0
        self.written: set[Path] = set()
        self._lock_file = None

    # ------------------------------------------------------------------ ownership
    def acquire(self) -> None:
        """Locks `<outputs>` (rank 0); a second live run on the same folder is refused."""
        if not self.is_main or self._lock_file is not None:
            return
        self.outputs.mkdir(parents=True, exist_ok=True)
        lock = open(self.outputs / LOCK_NAME, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise OutputsInUseError(f"{self.outputs} is in use by a running training ({holder}); wait for it "
                                    "to finish or pass another --outputs") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        self._lock_file = lock
        self._remove_stale_temp_dirs()

    def release(self) -> None:
        if self._lock_file is not None:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            finally:
                self._lock_file.close()
                self._lock_file = None

    def _remove_stale_temp_dirs(self) -> None:
        # Under the lock no other run writes here: a temp dir is a dead run's partial save, never
        # loadable, and only keeps the disk full.
        for entry in self.outputs.iterdir():
            if entry.name.startswith(TMP_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                logger.info("removed unfinished checkpoint %s (a save of an earlier run was interrupted)", entry)

    # ------------------------------------------------------------------ what to resume
    def resolve(self, load: str | None, overwrite: bool = False) -> Path | None:
        """The checkpoint to resume from (rank 0): None (fresh start), a dir, or "auto" (newest).

        A fresh start in a folder that holds checkpoints, or a rollback to a step older than
        checkpoints present, is refused unless `overwrite`: either would later replace them.
        """
        existing = complete_checkpoints(self.outputs)
        if load is None:
            if existing and not overwrite:
                raise OutputExistsError(
                    f"{self.outputs} already holds {len(existing)} checkpoint(s) (newest {existing[-1][1].name}) "
                    "from an earlier run; resume it with --load auto, or pass a new --outputs, or set "
                    "--cfg-options overwrite=True to start over there")
            return None
        if load == "auto":
            latest = find_latest_checkpoint(self.outputs)
            logger.info("--load auto: %s", f"resuming from {latest}" if latest else
                        f"no complete checkpoint under {self.outputs}, starting from scratch")
            return self._adopt(latest)
        path = Path(load).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"--load {load}: no such checkpoint directory")
        missing = missing_files(path)
        if missing:
            raise CheckpointError(f"--load {load}: not a complete training checkpoint (missing "
                                  f"{', '.join(missing)}); expected a <outputs>/step_XXXXXXXXX dir")
        match = STEP_DIR.match(path.name)
        step = int(match.group(1)) if match else 0
        newer = [p.name for s, p in existing if s > step and p.resolve() != path.resolve()]
        if newer and not overwrite:
            raise OutputExistsError(
                f"--load {load}: {self.outputs} holds newer checkpoints ({', '.join(newer[:3])}"
                f"{' ...' if len(newer) > 3 else ''}) that this resumed run would overwrite; move them "
                "away, or resume into a new --outputs, or set --cfg-options overwrite=True")
        return self._adopt(path)

    def _adopt(self, ckpt: Path | None) -> Path | None:
        if ckpt is not None:
            self.lineage = (read_lineage(ckpt) or []) + self.lineage
            match = STEP_DIR.match(ckpt.name)
            self.resume_step = int(match.group(1)) if match else 0
        return ckpt

    # ------------------------------------------------------------------ save / prune
    def save(self, step: int, pipeline_config: dict, model_state: dict[str, torch.Tensor],
             training_state: dict[str, Any], cfg: Config,
             ema_state: dict[str, torch.Tensor] | None = None) -> Path:
        path = write_checkpoint(self.outputs, step, pipeline_config, model_state,
                                {**training_state, "lineage": list(self.lineage)}, cfg, ema_state,
                                lineage=self.lineage)
        self.written.add(path.resolve())
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Deletes all but the newest `keep_last` checkpoints this run may remove."""
        if not self.keep_last:
            return []
        ours = set(self.lineage)
        candidates = []
        for step, path in complete_checkpoints(self.outputs):
            lineage = read_lineage(path)
            if not lineage or lineage[-1] not in ours:
                continue  # another run's (or a pre-lineage) checkpoint
            if path.resolve() not in self.written and step > self.resume_step:
                continue  # a later branch of this lineage that a rollback did not overwrite (yet)
            candidates.append(path)
        doomed = candidates[:-self.keep_last]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed old checkpoint %s (keep_last_ckpts=%d)", path, self.keep_last)
        return doomed
