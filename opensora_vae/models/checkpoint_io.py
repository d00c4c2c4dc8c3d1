"""Reading pipeline checkpoints: our `save_pretrained` dirs and the released HF checkpoint.

The released `hpcai-tech/OpenSora-VAE-v1.2` `config.json` only names its parts
(`VideoAutoencoderKL` + `VAE_Temporal_SD`); the SDXL VAE architecture ships with this package,
so loading it needs no second download: all weights are in `model.safetensors`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from .spatial import SCALING_FACTOR, SpatialVAE, sdxl_vae_config
from .temporal import TemporalVAE
from ..errors import UserError

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
TEMPORAL_KEYS = ("in_out_channels", "latent_embed_dim", "embed_dim", "filters", "num_res_blocks",
                 "channel_multipliers", "temporal_downsample", "num_groups")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def _temporal_kwargs(cfg: dict) -> dict:
    kind = cfg.get("type", "VAE_Temporal_SD")
    if kind not in ("VAE_Temporal_SD", "VAE_Temporal"):
        raise CheckpointError(f"unsupported temporal VAE type '{kind}' in config.json "
                              "(expected VAE_Temporal_SD or VAE_Temporal)")
    kwargs = {k: cfg[k] for k in TEMPORAL_KEYS if k in cfg}
    # VAE_Temporal_SD is the reference factory: the released sizes are our TemporalVAE defaults.
    return kwargs


def _spatial_module(cfg: dict) -> AutoencoderKL:
    kind = cfg.get("type", "VideoAutoencoderKL")
    if kind != "VideoAutoencoderKL":
        raise CheckpointError(f"unsupported spatial VAE type '{kind}' in config.json")
    return AutoencoderKL.from_config(dict(cfg.get("config") or sdxl_vae_config()))


OVERRIDE_KEYS = ("micro_frame_size", "micro_batch_size", "shift", "scale", "freeze_spatial")


def _check_overrides(overrides: dict) -> None:
    unknown = set(overrides) - set(OVERRIDE_KEYS)
    if unknown:
        raise TypeError(f"unknown pipeline overrides: {sorted(unknown)}")


def pipeline_from_config(cls, config: dict, device=None, **overrides):
    """Builds a pipeline with random weights (or on `meta`) from a config.json dict."""
    _check_overrides(overrides)
    spatial_cfg = config.get("vae_2d", {}) or {}
    micro_batch_size = overrides.pop("micro_batch_size", spatial_cfg.get("micro_batch_size", 4))
    settings = dict(micro_frame_size=config.get("micro_frame_size", 17),
                    shift=config.get("shift"), scale=config.get("scale"), freeze_spatial=False)
    settings.update(overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        spatial = SpatialVAE(_spatial_module(spatial_cfg), micro_batch_size=micro_batch_size,
                             scaling_factor=spatial_cfg.get("scaling_factor", SCALING_FACTOR))
        temporal = TemporalVAE(**_temporal_kwargs(config.get("vae_temporal", {}) or {}))
        freeze = settings.pop("freeze_spatial")
        settings = {k: v for k, v in settings.items() if v is not None or k == "micro_frame_size"}
        pipe = cls(spatial, temporal, freeze_spatial=False, **settings)
    if freeze:
        pipe.freeze_spatial = True
        pipe.spatial_vae.requires_grad_(False)
    return pipe


MODEL_SUBDIR = "model"  # <outputs>/step_XXXXXXXXX/model holds a training step's save_pretrained files


def resolve_pipeline_dir(path_or_repo: str | Path) -> str:
    """The save_pretrained dir (or hub id) that `path_or_repo` names.

    A training step dir (`step_000001000/` with `model/` inside) resolves to its `model/`; a run
    dir holding several step dirs is refused with the latest one as a suggestion, because picking
    one silently could load the wrong weights. Anything else is returned unchanged.
    """
    path = Path(path_or_repo).expanduser()
    if not path.is_dir() or (path / CONFIG_NAME).is_file():
        return str(path_or_repo)
    if (path / MODEL_SUBDIR).is_dir():
        return str(path / MODEL_SUBDIR)
    steps = sorted(p for p in path.glob("step_*") if p.is_dir())
    if steps:
        raise CheckpointError(f"'{path}' is a training run dir with {len(steps)} checkpoints; pass one "
                              f"step dir, e.g. {steps[-1]}")
    return str(path_or_repo)


def write_pipeline_dir(save_dir: str | Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Writes the save_pretrained format (config.json + model.safetensors) from a state dict."""
    from safetensors.torch import save_file

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(save_dir / WEIGHTS_NAME), metadata={"format": "pt"})


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
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint '{repo}' does not exist (not a local directory, "
                              "and not a Hugging Face hub id of the form owner/name)")
    try:
        from huggingface_hub import hf_hub_download

        return (Path(hf_hub_download(repo, CONFIG_NAME)), Path(hf_hub_download(repo, WEIGHTS_NAME)))
    except Exception as err:
        raise CheckpointError(
            f"'{repo}' is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {err}).\nOn a connected machine run `huggingface-cli download "
            f"{repo} --local-dir pretrained_models/{repo.split('/')[-1]}` and pass that directory."
        ) from err


def load_state_dict_file(weights: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(weights))
    except Exception as err:
        raise CheckpointError(f"cannot read weights '{weights}': {err} (corrupt or incomplete file?)") from err


def load_weights_into(pipe: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                      assign: bool = False) -> None:
    """Strict load with a readable report of missing / unexpected / mis-shaped keys."""
    own = pipe.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"checkpoint '{source}' does not fit this model architecture:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:5])
                             + (" ..." if len(items) > 5 else ""))
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


def load_pipeline(cls, path_or_repo, **overrides):
    config_path, weights_path = resolve_checkpoint_files(path_or_repo)
    config = read_pipeline_config(config_path)
    _check_overrides(overrides)  # a caller's mistake, not the checkpoint's
    # Built on `meta`, then the weights are assigned: no time spent on random init of 393 M params.
    try:
        pipe = pipeline_from_config(cls, config, device="meta", **overrides)
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # values of the wrong type or range
        raise CheckpointError(f"'{config_path}' does not describe a pipeline this code can build "
                              f"({type(err).__name__}: {err})") from err
    load_weights_into(pipe, load_state_dict_file(weights_path), str(path_or_repo), assign=True)
    return pipe
