"""Training checkpoints: the `CheckpointManager` owns a run's `<outputs>` folder and the training
state saved in it.

**State entries** (torchtitan's `states={...}` pattern). `manager.states` maps a name to a
stateful object with two methods:

    state_dict() -> Any              called on EVERY rank at each save (it may run collectives:
                                     FSDP gathers, gathering every rank's RNG); rank 0's is written
    load_state_dict(state) -> None   called on every rank at a resume, with what was saved

A component registers its state once, before `restore()`: `manager.register("name", obj)`. That
is all it takes: saving, resuming, the refusal below and pruning follow. Entries are restored in
registration order (so an entry may read one registered before it, e.g. the RNG reads whether
the counters' saved world size matches). `states.py` wraps the trainer's components.

**Layout** (the names are `models/checkpoint_io.py`'s, the one module that knows them):
`<outputs>/step_{global_step:09d}/` holds
- `model/`, `ema/` (WEIGHT_DIRS): save_pretrained dirs (config.json + model.safetensors, loadable
  by `from_pretrained` and as `--ckpt-path`) of the entries with those names; a dir gets the
  model's config.json, and the weights an entry does not track (the EMA's frozen ones) from the model;
- `training_state.pt`: every other entry under its name (optimizer, sampler, rng, lr_scheduler,
  ...), except TOP_LEVEL_ENTRIES (counters, replicas) whose keys sit at the top level as before
  entries existed; plus `format_version`, the `lineage` and one bool per WEIGHT_DIRS entry but
  the model (`"ema": True/False`);
- `config.py`: the resolved config of the run;
- `lineage.json`: `{"run_id", "lineage", "step", "entries"}`: which run wrote it, the runs it
  resumed from, and the entries it holds (checkpoints without lineage are never pruned).
Rank 0 writes everything into a hidden temp dir under `<outputs>` and renames it into place, so
a `step_*` dir is either complete or absent; a crash leaves only a temp dir, never loadable.

**State never vanishes silently.** A checkpoint holding an entry that the resuming run does not
register (its config turned the component off, e.g. no `ema_decay`) is refused with the config
key that keeps it (`ENTRY_CONFIG_KEYS`) or `drop_state=[name]` to drop it on purpose; and pruning
never deletes the newest checkpoint holding an entry that newer checkpoints lack. An entry that
the run registers and the checkpoint lacks (it was off, or older code) starts fresh, with a warning.

`<outputs>/.lock` is held (flock) by the run that owns the folder for its whole life; the kernel
releases it when that process ends however it ends, so a lock left by a dead run never blocks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from mmengine.config import Config

from ..distributed import barrier, rank0_decides
from ..errors import OutputExistsError, UserError
from ..models.checkpoint_io import (CONFIG_DUMP, CONFIG_NAME, EMA_SUBDIR, LINEAGE_NAME, LOCK_NAME, MODEL_SUBDIR,
                                    STATE_NAME, TMP_PREFIX, TOP_LEVEL_ENTRIES, WEIGHT_DIRS, WEIGHTS_NAME,
                                    CheckpointError, load_state_dict_file, step_dir_name, step_of,
                                    write_pipeline_dir)
from .adversarial import ADVERSARIAL_ENTRIES

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Headroom over the bytes of the tensors: safetensors/torch.save headers, the config, the filesystem.
SPACE_MARGIN = 1.05
# The validator's entry (its best score and last validated step), registered by the trainer.
VALIDATION_ENTRY = "validation"
# Entries of checkpoints written before lineage.json listed them (plus the WEIGHT_DIRS present).
LEGACY_ENTRIES = (MODEL_SUBDIR, "optimizer", "sampler", "rng", "counters", "replicas")
# The config key that turns an optional entry on: named when a resume would drop its state.
ENTRY_CONFIG_KEYS = {EMA_SUBDIR: "ema_decay=<its decay, e.g. 0.9999>",
                     VALIDATION_ENTRY: "val_data_path=<the validation table>"}
# The adversarial phase's entries: its config file's `discriminator` dict.
ENTRY_CONFIG_KEYS.update(dict.fromkeys(ADVERSARIAL_ENTRIES,
                                       "discriminator=<the run's dict, e.g. configs/vae/train/stage3_gan.py's>"))



class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class OutputsInUseError(UserError):
    """Another live run holds the outputs folder's lock."""


class DiskFullError(UserError, OSError):
    """A checkpoint did not fit on the disk; nothing older was removed."""


class StateWouldVanishError(CheckpointError):
    """The checkpoint holds state that this run's config would not continue."""


def missing_files(ckpt: Path) -> list[str]:
    """Files a complete checkpoint dir must hold that `ckpt` lacks."""
    need = [f"{MODEL_SUBDIR}/{CONFIG_NAME}", f"{MODEL_SUBDIR}/{WEIGHTS_NAME}", STATE_NAME, CONFIG_DUMP]
    missing = [n for n in need if not (ckpt / n).is_file()]
    if not missing:
        for sub in WEIGHT_DIRS:
            if (ckpt / sub).exists():
                missing += [f"{sub}/{n}" for n in (CONFIG_NAME, WEIGHTS_NAME) if not (ckpt / sub / n).is_file()]
    return missing


def complete_checkpoints(outputs: str | Path, warn: bool = False) -> list[tuple[int, Path]]:
    """(step, dir) of every complete `step_*` dir under `outputs`, oldest first."""
    outputs = Path(outputs)
    if not outputs.is_dir():
        return []
    found = []
    for entry in outputs.iterdir():
        step = step_of(entry)
        if step is None or not entry.is_dir():
            continue
        missing = missing_files(entry)
        if missing:
            if warn:
                logger.warning("ignoring incomplete checkpoint %s (missing %s)", entry, ", ".join(missing))
            continue
        found.append((step, entry))
    return sorted(found)


def find_latest_checkpoint(outputs: str | Path) -> Path | None:
    """Newest complete `step_*` dir under `outputs`; temp dirs and incomplete dirs are skipped."""
    found = complete_checkpoints(outputs, warn=True)
    return found[-1][1] if found else None


def _lineage_file(ckpt: Path) -> dict:
    try:
        data = json.loads((ckpt / LINEAGE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_lineage(ckpt: Path) -> list[str] | None:
    """The run ids that led to `ckpt` (its writer last), None for checkpoints without lineage."""
    lineage = _lineage_file(ckpt).get("lineage")
    return [str(x) for x in lineage] if isinstance(lineage, list) else None


def held_entries(ckpt: Path) -> set[str]:
    """The state entries `ckpt` holds (lineage.json lists them; older checkpoints: the legacy set)."""
    entries = _lineage_file(ckpt).get("entries")
    if isinstance(entries, list):
        return {str(e) for e in entries}
    return set(LEGACY_ENTRIES) | {sub for sub in WEIGHT_DIRS if (ckpt / sub).is_dir()}


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


def write_checkpoint(outputs: str | Path, step: int, cfg: Config, pipeline_config: dict,
                     states: dict[str, Any], lineage: list[str] | None = None) -> Path:
    """Rank 0 only: writes `<outputs>/step_{step:09d}` atomically from entry states (module
    docstring) and returns it. `pipeline_config` is the config.json of the WEIGHT_DIRS entries.

    A disk that cannot hold it is refused before writing (DiskFullError, with the sizes); a write
    that fails anyway removes its partial temp dir. An existing dir of the same step is replaced
    only after the new one is complete.
    """
    outputs = Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    final = outputs / step_dir_name(step)
    needed = tensor_bytes(*states.values()) * SPACE_MARGIN
    free = shutil.disk_usage(outputs).free
    if needed > free:
        raise DiskFullError(errno.ENOSPC, f"no space left on device for checkpoint {final.name} in {outputs}: "
                            f"needed ~{_mb(needed)}, free {_mb(free)}; free some space (older "
                            f"checkpoints were kept) or lower keep_last_ckpts, then resume with --load auto")
    training_state: dict[str, Any] = {"format_version": FORMAT_VERSION}
    for name, state in states.items():
        if name in TOP_LEVEL_ENTRIES:
            training_state.update(state)
        elif name not in WEIGHT_DIRS:
            training_state[name] = state
    training_state.update({sub: sub in states for sub in WEIGHT_DIRS if sub != MODEL_SUBDIR})
    if lineage is not None:
        training_state["lineage"] = list(lineage)
    tmp = outputs / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        for sub in WEIGHT_DIRS:
            if sub in states:  # the weights an entry does not track (frozen ones) are the model's
                write_pipeline_dir(tmp / sub, pipeline_config, {**states.get(MODEL_SUBDIR, {}), **states[sub]})
        torch.save(training_state, tmp / STATE_NAME)
        dump_config(cfg, tmp / CONFIG_DUMP)
        if lineage is not None:
            (tmp / LINEAGE_NAME).write_text(json.dumps({"run_id": lineage[-1], "lineage": lineage,
                                                        "step": step, "entries": list(states)}) + "\n")
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
    return load_state_dict_file(save_dir / WEIGHTS_NAME)


class CheckpointManager:
    """Owns `<outputs>` (its lock, what to resume, saving, pruning) and the training state entries.

    Rank 0 does the file work; every rank calls `start`, `restore` and `save` (they agree through
    collectives). Pruning removes only checkpoints of this run's lineage (the run ids it resumed
    through), never those newer than the step it resumed from that it did not write itself (so a
    rollback or a second run never deletes another run's checkpoints), and never the newest one
    holding an entry that newer ones lack.
    """

    def __init__(self, outputs: str | Path, keep_last: int | None, is_main: bool = True,
                 states: dict[str, Stateful] | None = None):
        self.outputs = Path(outputs)
        self.keep_last = keep_last
        self.is_main = is_main
        self.states: dict[str, Stateful] = {}
        for name, obj in (states or {}).items():
            self.register(name, obj)
        self.lineage: list[str] = [uuid.uuid4().hex]
        self.resume_step = 0
        self.resume_dir: Path | None = None
        self.written: set[Path] = set()
        self.pinned: set[Path] = set()  # never pruned: e.g. validation's best step (val_best.json)
        self._lock_file = None

    def register(self, name: str, obj: Stateful) -> None:
        """Adds a state entry: saved with every checkpoint, restored by `restore` (module docstring)."""
        if name in self.states:
            raise ValueError(f"checkpoint state entry '{name}' is registered twice")
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise TypeError(f"checkpoint state entry '{name}' needs state_dict() and load_state_dict()")
        self.states[name] = obj

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
    def start(self, load: str | None, overwrite: bool = False) -> Path | None:
        """All ranks: rank 0 locks `<outputs>` and chooses the checkpoint to resume (`resolve`);
        every rank gets the same choice, or the same error. Returns it (also `resume_dir`)."""
        def decide():
            self.acquire()
            found = self.resolve(load, overwrite=overwrite)
            return str(found) if found else None, self.lineage, self.resume_step

        found, self.lineage, self.resume_step = rank0_decides(decide)
        self.resume_dir = Path(found) if found else None
        return self.resume_dir

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
        step = step_of(path) or 0
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
            self.resume_step = step_of(ckpt) or 0
        return ckpt

    def weights_dir(self, name: str = MODEL_SUBDIR) -> Path | None:
        """The resumed checkpoint's save_pretrained dir of entry `name` (None on a fresh start)."""
        return self.resume_dir / name if self.resume_dir is not None else None

    def restore(self, drop: Iterable[str] = ()) -> bool:
        """All ranks: loads every registered entry from the checkpoint `start` chose, in
        registration order. False on a fresh start.

        Refused (StateWouldVanishError) when the checkpoint holds an entry this run does not
        register, unless `drop` names it (the config's `drop_state`).
        """
        ckpt = self.resume_dir
        if ckpt is None:
            return False
        held, drop = held_entries(ckpt), set(drop)
        vanishing = sorted(held - set(self.states) - drop)
        if vanishing:
            keys = [ENTRY_CONFIG_KEYS.get(n) for n in vanishing]
            keep = " ".join(dict.fromkeys(k for k in keys if k)) or "the setting that turns it on"
            raise StateWouldVanishError(
                f"{ckpt} holds {', '.join(repr(n) for n in vanishing)} state that this run's config does not "
                f"continue, so it would be lost: set --cfg-options {keep} to continue it, or "
                f"--cfg-options drop_state=[{','.join(vanishing)}] to drop it on purpose (the newest "
                "checkpoint holding it is then kept)")
        dropped = sorted(held & drop - set(self.states))
        if dropped and self.is_main:
            logger.warning("drop_state: this run does not continue the %s state of %s; pruning keeps the newest "
                           "checkpoint holding it", ", ".join(dropped), ckpt)
        state = read_training_state(ckpt)
        for name, obj in self.states.items():
            if name not in held:
                if self.is_main:
                    logger.warning("%s has no '%s' state (it was off, or saved by older code): it starts fresh",
                                   ckpt, name)
                continue
            if name in WEIGHT_DIRS:
                saved = read_weights(ckpt / name)
            elif name in TOP_LEVEL_ENTRIES:
                saved = state
            else:
                saved = state[name]
            try:
                obj.load_state_dict(saved)
            except CheckpointError as err:
                raise CheckpointError(f"{ckpt}: {err}") from err
        if self.is_main:
            logger.info("resumed from %s at step %d", ckpt, self.resume_step)
        return True

    # ------------------------------------------------------------------ save / prune
    def save(self, step: int, cfg: Config) -> Path | None:
        """All ranks: every entry's `state_dict()` (collectives), then rank 0 writes
        `step_{step:09d}` and prunes. Returns the dir on rank 0, None elsewhere. A user error
        (a full disk) is raised on every rank."""
        barrier()
        states = {name: obj.state_dict() for name, obj in self.states.items()}
        model = self.states.get(MODEL_SUBDIR)
        pipeline_config = model.pipeline_config() if hasattr(model, "pipeline_config") else {}

        def write() -> str:
            path = write_checkpoint(self.outputs, step, cfg, pipeline_config, states, lineage=self.lineage)
            self.written.add(path.resolve())
            self.prune()
            logger.info("saved checkpoint %s", path)
            return str(path)

        path = rank0_decides(write)
        return Path(path) if self.is_main else None

    def prune(self) -> list[Path]:
        """Deletes all but the newest `keep_last` checkpoints this run may remove, keeping the
        newest checkpoint that holds an entry newer checkpoints lack."""
        if not self.keep_last:
            return []
        ours = set(self.lineage)
        existing = complete_checkpoints(self.outputs)
        candidates = []
        for step, path in existing:
            lineage = read_lineage(path)
            if not lineage or lineage[-1] not in ours:
                continue  # another run's (or a pre-lineage) checkpoint
            if path.resolve() not in self.written and step > self.resume_step:
                continue  # a later branch of this lineage that a rollback did not overwrite (yet)
            candidates.append(path)
        doomed = [p for p in candidates[:-self.keep_last] if p.resolve() not in self.pinned]
        # Newest first: an entry that no newer surviving checkpoint holds keeps this one alive.
        held_later: set[str] = set()
        for step, path in reversed(existing):
            held = held_entries(path)
            if path in doomed and held - held_later:
                doomed.remove(path)
                logger.info("kept old checkpoint %s: the newest one holding %s state", path,
                            ", ".join(sorted(held - held_later)))
            if path not in doomed:
                held_later |= held
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
            self.written.discard(path.resolve())  # only existing dirs: bounded however long the run
            logger.info("removed old checkpoint %s (keep_last_ckpts=%d)", path, self.keep_last)
        return doomed
