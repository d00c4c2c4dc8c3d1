"""Pipeline checkpoint files: finding, reading and writing `config.json` + `model.safetensors`.

File I/O only: which files a path or hub id names, reading them (with the checks that make a
damaged or poisoned file an error rather than a silently broken model), and writing them.
Turning a `config.json` into a model is `VideoVAEPipeline.from_config` (models/pipeline.py).

The released `hpcai-tech/OpenSora-VAE-v1.2` holds all weights (spatial and temporal) in its
`model.safetensors`, so loading it needs no second download.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import torch

from ..config import released_checkpoint
from ..errors import UserError

RELEASED_REPO = released_checkpoint()  # its one place: configs/vae/inference/video.py (ckpt_path)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MAX_LISTED = 5  # tensors named in an error message
# A Hugging Face hub id: owner/name, each of letters, digits, '-', '_', '.' and not starting with '.'.
_HUB_ID = re.compile(r"[\w-][\w.-]*/[\w-][\w.-]*")

# ----------------------------------------------------------------------------- training folder layout
# The one place that knows how a training run lays out `<outputs>` (training/checkpoint.py writes
# it, `resolve_pipeline_dir` below reads it). A checkpoint is `<outputs>/step_{step:09d}/` with:
STEP_GLOB = "step_*"
STEP_DIR = re.compile(r"^step_(\d{9})$")
MODEL_SUBDIR = "model"  # the model weights as save_pretrained files (config.json + model.safetensors)
EMA_SUBDIR = "ema"  # the EMA weights, same format, when ema_decay is set
# Checkpoint state entries stored as save_pretrained dirs named after the entry (in this order);
# every other entry is stored in STATE_NAME under its own name.
WEIGHT_DIRS = (MODEL_SUBDIR, EMA_SUBDIR)
# Entries whose keys sit at the top level of STATE_NAME (the format from before state entries).
TOP_LEVEL_ENTRIES = ("counters", "replicas")
STATE_NAME = "training_state.pt"  # every other entry (optimizer, sampler, RNG, ...) and the counters
CONFIG_DUMP = "config.py"  # the resolved config of the run
LINEAGE_NAME = "lineage.json"  # {"run_id", "lineage", "step", "entries"}
TMP_PREFIX = ".tmp_"  # a save in progress (`<outputs>/.tmp_step_...`), never loadable
LOCK_NAME = ".lock"  # held by the run that owns `<outputs>`


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def step_of(path: Path) -> int | None:
    """The global step a checkpoint dir's name says, None for another name."""
    match = STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None

# Offline, huggingface_hub retries every request 5 times with backoff (~30 s per file, each retry
# logged); one quick connection attempt decides instead, once per process.
HUB_PROBE_TIMEOUT_S = 3.0

logger = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def _listed(items: list[str]) -> str:
    return "; ".join(items[:MAX_LISTED]) + (" ..." if len(items) > MAX_LISTED else "")


def resolve_pipeline_dir(path_or_repo: str | Path | None) -> str:
    """The save_pretrained dir (or hub id) that `path_or_repo` names.

    A training step dir (`step_000001000/` with `model/` inside) resolves to its `model/`; a run
    dir holding several step dirs is refused with the latest one as a suggestion, because picking
    one silently could load the wrong weights. Anything else is returned unchanged.
    """
    if path_or_repo is None or str(path_or_repo).strip() == "":
        raise CheckpointError("no checkpoint given: pass --ckpt-path (a save_pretrained dir, a training "
                              f"step dir, or the released {RELEASED_REPO})")
    path = Path(path_or_repo).expanduser()
    if not path.is_dir() or (path / CONFIG_NAME).is_file():
        return str(path_or_repo)
    if (path / MODEL_SUBDIR).is_dir():
        return str(path / MODEL_SUBDIR)
    steps = sorted(p for p in path.glob(STEP_GLOB) if p.is_dir())
    if steps:
        raise CheckpointError(f"'{path}' is a training run dir with {len(steps)} checkpoints; pass one "
                              f"step dir, e.g. {steps[-1]}")
    return str(path_or_repo)


def _umask() -> int:
    mask = os.umask(0)  # reading it needs setting it: put it straight back
    os.umask(mask)
    return mask


def write_pipeline_dir(save_dir: str | Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Writes the save_pretrained format (config.json + model.safetensors) from a state dict."""
    from safetensors.torch import save_file

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    weights = save_dir / WEIGHTS_NAME
    save_file(tensors, str(weights), metadata={"format": "pt"})
    # safetensors creates the file 0600 whatever the umask; give it the mode of every other file.
    os.chmod(weights, 0o666 & ~_umask())


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when it can. Checked once per process
    (HF_HUB_OFFLINE, else one TCP connection to the endpoint). Unreachable, the process (and its
    subprocesses) switches to huggingface_hub's offline mode, so the hub loaders use only the
    local cache and fail in seconds with their own message."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        reason = f"{endpoint.hostname} is unreachable ({err})"
        logger.warning("the Hugging Face hub %s: using only the local hub cache", reason)
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub
        return reason
    return None


def hub_local_files_only(path_or_repo: str | Path) -> bool:
    """True when `path_or_repo` is not a local path and the hub cannot be reached."""
    return not Path(path_or_repo).expanduser().exists() and hub_unreachable() is not None


def resolve_checkpoint_files(path_or_repo: str | Path) -> tuple[Path, Path]:
    """(config.json, model.safetensors) from a local dir (or training step dir), else the hub."""
    path_or_repo = resolve_pipeline_dir(path_or_repo)
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        config, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        missing = [p.name for p in (config, weights) if not p.is_file()]
        if missing:
            raise CheckpointError(f"checkpoint dir '{path}' lacks {', '.join(missing)}: expected a "
                                  "save_pretrained dir (config.json + model.safetensors), e.g. "
                                  "<outputs>/<run>/step_000001000/model")
        return config, weights
    if path.exists():
        raise CheckpointError(f"'{path}' is a file; pass the directory holding "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    repo = str(path_or_repo)
    looked_for = path.absolute()
    if not _HUB_ID.fullmatch(repo):
        # A path (absolute, ./, ../, ~, or more than the one owner/name slash) is never a hub id:
        # say where it was looked for rather than suggest a download.
        raise CheckpointError(f"checkpoint '{repo}' does not exist: no such local directory "
                              f"(looked for {looked_for})")
    offline = hub_local_files_only(repo)
    try:
        from huggingface_hub import hf_hub_download

        return (Path(hf_hub_download(repo, CONFIG_NAME, local_files_only=offline)),
                Path(hf_hub_download(repo, WEIGHTS_NAME, local_files_only=offline)))
    except Exception as err:
        why = f"{hub_unreachable()}, and it is not in the local hub cache" if offline else \
            f"{type(err).__name__}: {err}"
        raise CheckpointError(
            f"'{repo}' is no local directory (looked for {looked_for}) and could not be fetched from "
            f"the Hugging Face hub ({why}).\nOn a connected machine run "
            f"`huggingface-cli download {repo} --local-dir pretrained_models/{repo.split('/')[-1]}` "
            "and pass that directory."
        ) from err


def load_state_dict_file(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError when it is unreadable or holds NaN/inf
    (the weights of a diverged run give black videos with plausible-looking metrics)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as err:
        raise CheckpointError(f"cannot read weights '{weights}': {err} (corrupt or incomplete file?)") from err
    bad = []
    for name, tensor in state.items():
        if tensor.is_floating_point():
            count = tensor.numel() - int(torch.isfinite(tensor).sum())
            if count:
                bad.append(f"{name} ({count} of {tensor.numel()} values)")
    if bad:
        raise CheckpointError(f"weights '{weights}' hold non-finite values (NaN/inf) in {len(bad)} "
                              f"tensor(s): {_listed(bad)}; the checkpoint is unusable (a diverged run?): "
                              "load an earlier one")
    return state


def load_weights_into(pipe: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                      assign: bool = False) -> None:
    """Strict load with a readable report of missing / unexpected / mis-shaped / mis-typed keys.

    Float tensors of another precision are cast to the model's; an integer or bool tensor where
    the model has a float one is refused (casting it would load truncated garbage silently).
    """
    own = pipe.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    dtypes = [f"{k}: checkpoint {state[k].dtype} vs model {own[k].dtype}"
              for k in own if k in state and own[k].is_floating_point() and not state[k].is_floating_point()]
    if missing or unexpected or shapes or dtypes:
        lines = [f"checkpoint '{source}' does not fit this model architecture:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes), ("non-float tensors for float weights", dtypes)):
            if items:
                lines.append(f"  {title} ({len(items)}): {_listed(items)}")
        raise CheckpointError("\n".join(lines))
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    pipe.load_state_dict(state, strict=True, assign=assign)


def read_pipeline_config(config_path: Path) -> dict:
    """The parsed `config.json`; CheckpointError when it is not a JSON object (a damaged file)."""
    try:
        config = json.loads(config_path.read_text())
    except Exception as err:
        raise CheckpointError(f"cannot parse '{config_path}': {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"'{config_path}' is not a JSON object (got {type(config).__name__}): "
                              "not a pipeline config.json")
    return config
