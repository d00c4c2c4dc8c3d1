"""Config loading: mmengine Python configs, CLI overrides, and rejection of unknown keys.

Every key a config may set is defined, with its default, in `configs/vae/_base_/default_*.py`
(the schema). A key outside the schema, a value of the wrong type, or one outside its choices or
range (`_rules`) is an error before any work starts: a typo must never be silently ignored.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from mmengine.config import Config
from .errors import UserError




def _config_dir() -> Path:
    """`configs/vae`: the checkout's, or the copy an installed package holds (setup.py ships it as
    `opensora_vae/configs`), so a config loads without a checkout."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs" / "vae"


CONFIG_DIR = _config_dir()  # holds _base_/ (the schema), train/ and inference/
# The schema files: default_train.py inherits model_v1_2.py (the model.* keys); default_inference.py and
# default_encode.py inherit default_clips.py (which keeps only the chunk sizes of model.*).
SCHEMAS = {"train": "default_train.py", "inference": "default_inference.py", "encode": "default_encode.py",
           "model": "model_v1_2.py"}

# Flags of the entry scripts that set config keys (reference CLI names).
CLI_KEYS = {
    "data_path": "dataset.data_path",
    "outputs": "outputs",
    "ckpt_path": "ckpt_path",
    "load": "load",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "save_dir": "save_dir",
    "num_samples": "num_samples",
}


class ConfigError(UserError, ValueError):
    """A config that names unknown keys, or holds values of the wrong type or out of range."""


def schema_path(kind: str) -> Path:
    if kind not in SCHEMAS:
        raise ValueError(f"unknown config kind '{kind}', expected one of {sorted(SCHEMAS)}")
    path = CONFIG_DIR / "_base_" / SCHEMAS[kind]
    if not path.is_file():
        raise FileNotFoundError(f"config schema {path} is missing: reinstall the package (setup.py ships "
                                "configs/vae as opensora_vae/configs) or run from a checkout")
    return path


# Keys whose schema default is None ("unset") still have one type when they are set.
PATH = (str, os.PathLike)
TYPES_WHEN_SET = {
    "train": {"max_steps": int, "ema_decay": float, "ckpt_path": PATH, "load": PATH,
              "perceptual_backbone_path": PATH, "dataset.data_path": PATH, "model.from_pretrained": PATH,
              "model.spatial.config": dict, "val_data_path": PATH, "val_max_clips": int},
    "inference": {"num_samples": int, "ckpt_path": PATH, "dataset.data_path": PATH,
                  "model.from_pretrained": PATH, "model.spatial.config": dict},
}
TYPES_WHEN_SET["encode"] = TYPES_WHEN_SET["inference"]  # the export reuses the inference settings


# Adversarial phase (training/adversarial.py).
TYPES_WHEN_SET["train"].update({"discriminator": dict, "lecam_loss_weight": float,
                                "gradient_penalty_loss_weight": float, "discriminator_grad_clip": float})


def _matches(value: Any, kind: type | tuple) -> bool:
    """isinstance, except that bools are not numbers and an int key takes no float (1.5 steps)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _type_name(kind: type | tuple) -> str:
    return "path" if kind == PATH else kind.__name__


def _type_ok(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True  # None means "unset" in the schema (see TYPES_WHEN_SET)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return _matches(value, dict if isinstance(default, dict) else type(default))


def _unknown_key(name: str, key: str, prefix: str, level: dict, where: str = "") -> str:
    """`unknown key 'name'`, with the keys of the same section that look alike."""
    close = [k for k in level if _similar(k, key)]
    hint = f" (did you mean {', '.join(repr(prefix + c) for c in close)}?)" if close else ""
    return f"unknown key '{name}'{where}{hint}"


def _validate(cfg: dict, schema: dict, prefix: str, errors: list[str], when_set: dict) -> None:
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if key not in schema:
            errors.append(_unknown_key(name, key, prefix, schema))
            continue
        default = schema[key]
        if not _type_ok(value, default):
            errors.append(f"'{name}' = {value!r} has type {type(value).__name__}, "
                          f"expected {type(default).__name__} like the default {default!r}")
        elif default is None and value is not None and name in when_set and not _matches(value, when_set[name]):
            errors.append(f"'{name}' = {value!r} has type {type(value).__name__}, "
                          f"expected {_type_name(when_set[name])} (or None)")
        elif isinstance(default, dict) and isinstance(value, dict):
            _validate(value, default, name + ".", errors, when_set)


# ----------------------------------------------------------------------------- value rules
# What the type check cannot see: choices and ranges. Each rule returns None when the value is
# fine, else what it should be. Checked for every key, before any file is written.
Rule = Callable[[Any], "str | None"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(low: float) -> Rule:
    return lambda v: None if _number(v) and v >= low else f"a number >= {low}"


def above(low: float) -> Rule:
    return lambda v: None if _number(v) and v > low else f"a number > {low}"


def within(low: float, high: float, high_open: bool = False) -> Rule:
    def rule(v):
        ok = _number(v) and low <= v and (v < high if high_open else v <= high)
        return None if ok else f"a number in [{low}, {high}{')' if high_open else ']'}"
    return rule


def one_of(*choices: Any) -> Rule:
    return lambda v: None if v in choices else "one of " + ", ".join(repr(c) for c in choices)


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else (None if rule(v) is None else f"None or {rule(v)}")


def each(rule: Rule, length: int | None = None) -> Rule:
    def check(v):
        if not isinstance(v, (list, tuple)) or (length is not None and len(v) != length) or not v:
            return f"a list of {length or 'one or more'} values, each {rule(None) or 'valid'}"
        bad = [x for x in v if rule(x) is not None]
        return f"a list whose values are each {rule(bad[0])}" if bad else None
    return check


# Frames are encoded in 8x8 pixel blocks (the spatial VAE); PSNR/SSIM/LPIPS need every side >= the
# SSIM window. A size that fails either is refused here, not after hours of work.
SPATIAL_DOWNSAMPLE = 8


def frame_side(v: Any) -> str | None:
    from .metrics.ssim import WINDOW_SIZE

    smallest = -(-WINDOW_SIZE // SPATIAL_DOWNSAMPLE) * SPATIAL_DOWNSAMPLE
    ok = isinstance(v, int) and not isinstance(v, bool) and v % SPATIAL_DOWNSAMPLE == 0 and v >= smallest
    return None if ok else (f"a multiple of {SPATIAL_DOWNSAMPLE} (the spatial VAE's downsampling) and >= "
                            f"{smallest} (the SSIM window is {WINDOW_SIZE} pixels)")


def _non_empty_path(v: Any) -> str | None:
    return None if isinstance(v, (str, os.PathLike)) and str(v).strip() else "a non-empty path"


def _rules(kind: str) -> dict[str, Rule]:
    from .data.transforms import TRANSFORM_NAMES
    from .precision import DTYPES

    shared = {
        "dataset.num_frames": at_least(1),
        "dataset.frame_interval": at_least(1),
        "dataset.image_size": each(frame_side, length=2),
        "dataset.transform_name": one_of(*TRANSFORM_NAMES),
        "dataset.max_retries": at_least(1),
        "num_workers": at_least(0),
        "batch_size": at_least(1),
        "dtype": one_of(*DTYPES),
        "seed": at_least(0),
        "model.micro_frame_size": optional(at_least(1)),
        "model.shift": each(at_least(float("-inf"))),
        "model.scale": each(above(0)),
        "model.spatial.micro_batch_size": optional(at_least(1)),
        "model.spatial.scaling_factor": above(0),
    }
    # An empty path ("$CKPT" of an unset variable) is a mistake, never "none": None is the unset value.
    for key in ("dataset.data_path", "ckpt_path", "model.from_pretrained", "model.spatial.from_pretrained"):
        shared[key] = optional(_non_empty_path)
    for key in ("in_out_channels", "latent_embed_dim", "embed_dim", "filters", "num_res_blocks", "num_groups"):
        shared[f"model.temporal.{key}"] = at_least(1)
    shared["model.temporal.channel_multipliers"] = each(at_least(1))
    shared["dataset.read_timeout_s"] = above(0)
    if kind in ("inference", "encode"):
        from .inference.outputs import OUTPUT_NAME_STYLES

        inference = {**shared, "num_samples": optional(at_least(1)), "fps": above(0), "save_dir": _non_empty_path,
                     "output_names": one_of(*OUTPUT_NAME_STYLES)}
        if kind == "encode":
            from .export.storage import LATENT_DTYPES

            inference.update({"export.latent_dtype": one_of(*LATENT_DTYPES), "export.shard_size": at_least(1),
                              "export.qa_every": at_least(0)})
        return inference
    from .metrics.settings import EVAL_METRICS
    from .training.mixing import MIXED_STRATEGIES
    from .training.schedule import LR_SCHEDULE_KINDS

    return {
        **shared,
        "max_skip_fraction": within(0, 1),
        "mixed_strategy": one_of(*MIXED_STRATEGIES),
        "mixed_image_ratio": within(0, 1),
        "perceptual_loss_weight": at_least(0),
        "kl_loss_weight": at_least(0),
        "lr": above(0),
        "weight_decay": at_least(0),
        "adam_betas": each(within(0, 1, high_open=True), length=2),
        "adam_eps": above(0),
        # clip_grad_norm_ with max_norm < 0 flips the gradients: the run trains backwards.
        "grad_clip": optional(above(0)),
        "ema_decay": optional(within(0, 1, high_open=True)),
        "parallel": one_of("ddp", "fsdp"),
        "max_nonfinite_steps": at_least(1),
        "epochs": at_least(1),
        "max_steps": optional(at_least(1)),
        "outputs": _non_empty_path,
        "log_every": at_least(1),
        "ckpt_every": at_least(0),  # 0: only the final checkpoint
        "keep_last_ckpts": optional(at_least(1)),
        "preview_every": at_least(0),
        "drop_state": lambda v: (None if all(isinstance(x, str) and x for x in v)
                                 else "a list of checkpoint state names, e.g. ['ema']"),
        "lr_schedule.kind": one_of(*LR_SCHEDULE_KINDS),
        "lr_schedule.warmup_steps": at_least(0),
        "lr_schedule.min_lr_ratio": within(0, 1),
        **_adversarial_rules(),

        "load": optional(_non_empty_path),
        "perceptual_backbone_path": optional(_non_empty_path),
        # Held-out validation (training/validation.py)
        "val_every": at_least(1),
        "val_max_clips": optional(at_least(1)),
        "val_metrics": each(one_of(*EVAL_METRICS)),
        "val_best_metric": one_of(*EVAL_METRICS),
        "preflight_rows": at_least(0),
        "preflight_clips": at_least(0),
        "preflight_min_psnr": at_least(0),
    }


# Keys a run cannot start without (their schema default is None, "unset"), with what to pass.
# Not part of load_config: a config may be loaded (and checked) without them, e.g. to build a model.
REQUIRED = {
    "train": {"dataset.data_path": "no training data: pass --data-path (a CSV/parquet with a 'path' column)"},
    "inference": {"dataset.data_path": "no data: pass --data-path (a CSV/parquet with a 'path' column)",
                  "ckpt_path": "no checkpoint: pass --ckpt-path (a save_pretrained dir, a training step dir, "
                               "or a hub id such as the released one of configs/vae/inference/video.py)"},
}
REQUIRED["encode"] = REQUIRED["inference"]  # the export reads the same data and checkpoint keys


def check_required(cfg: Config | dict, kind: str) -> None:
    """ConfigError naming every key of `REQUIRED[kind]` that is unset: called by a run before any work."""
    data = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    missing = [message for key, message in REQUIRED[kind].items() if _lookup(data, key)[1] is None]
    if missing:
        raise ConfigError("; ".join(missing))


def _lookup(data: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_values(data: dict, kind: str, errors: list[str]) -> None:
    for key, rule in _rules(kind).items():
        present, value = _lookup(data, key)
        if present:
            want = rule(value)
            if want is not None:
                errors.append(f"'{key}' = {value!r}: must be {want}")
    if kind == "train":
        if not (data.get("use_real_rec_loss") or data.get("use_z_rec_loss")):
            # The identity loss alone would leave every multi-frame step without a loss.
            errors.append("enable use_real_rec_loss and/or use_z_rec_loss; use_image_identity_loss only "
                          "adds a term on 1-frame steps")
        if data.get("ema_decay") == 0:
            errors.append("'ema_decay' = 0: must be None (no EMA) or in (0, 1)")
        _check_discriminator(data, errors)

        model = data.get("model", {})
        if not errors:  # the sizes together (group counts divide widths, ceilings), once each is in range
            spatial = model["spatial"]
            errors.extend(architecture_problems(
                model["temporal"], spatial["config"] if isinstance(spatial.get("config"), dict) else None,
                {"micro_frame_size": model["micro_frame_size"], "micro_batch_size": spatial["micro_batch_size"],
                 "scaling_factor": spatial["scaling_factor"], "shift": model["shift"], "scale": model["scale"]}))

        from .training.validation import check_val_config

        errors.extend(check_val_config(data))


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


def validate(cfg: Config | dict, kind: str) -> None:
    schema = Config.fromfile(str(schema_path(kind))).to_dict()
    data = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    errors: list[str] = []
    _validate(data, schema, "", errors, TYPES_WHEN_SET.get(kind, {}))
    if not errors:  # ranges only make sense for values of the right type
        _check_values(data, kind, errors)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors)
                          + f"\nevery valid key is listed, with its default, in {schema_path(kind)} "
                          f"and, for model.*, in {schema_path('model')}")


def _balanced(text: str) -> bool:
    depth = {"(": 0, "[": 0}
    closing = {")": "(", "]": "["}
    for char in text:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


def _split_top_level(text: str) -> list[str]:
    """`"1, (2, 3), [4]"` → `["1", " (2, 3)", " [4]"]`: commas inside brackets do not split."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _scalar(text: str) -> Any:
    """int, float, bool (true/false in any case) or None, as mmengine's DictAction parses them;
    anything else is the string exactly as given (a path keeps its spaces)."""
    stripped = text.strip()
    for parse in (int, float):
        try:
            return parse(stripped)
        except ValueError:
            pass
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if stripped == "None":
        return None
    return text


def parse_value(text: str) -> Any:
    """One `--cfg-options` value: mmengine's syntax (`1`, `1e-4`, `True`, `None`, `[1,2]`, `(a, b)`,
    `0.9,0.99`), except that strings reach the config verbatim: mmengine's DictAction deletes
    every space (`outputs=/t/cfg out` became `/t/cfgout`). A value quoted whole ('...' or "...")
    is that string. Nothing is evaluated: values are parsed, never run."""
    if not _balanced(text):
        raise ConfigError(f"--cfg-options value {text!r} has unbalanced brackets")
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        return stripped[1:-1]
    brackets = {"(": ")", "[": "]"}
    if stripped[:1] in brackets and stripped.endswith(brackets[stripped[0]]) and _balanced(stripped[1:-1]):
        inner = stripped[1:-1]
        items = [parse_value(part.strip()) for part in _split_top_level(inner)] if inner.strip() else []
        if items and items[-1] == "":
            items.pop()  # "[1, 2,]": a trailing comma, as in Python
        return tuple(items) if stripped[0] == "(" else items
    if "," in stripped:
        # An unbracketed list of numbers/bools ("0.9,0.99"); a string with a comma stays a string.
        items = [_scalar(part) for part in _split_top_level(stripped)]
        if not any(isinstance(item, str) for item in items):
            return items
    return _scalar(text)


def parse_options(options: Iterable[str] | dict | None) -> dict:
    """`["a.b=1", "c=[1,2]"]` → {"a.b": 1, "c": [1, 2]} (see `parse_value`)."""
    if options is None:
        return {}
    if isinstance(options, dict):
        return dict(options)
    out: dict = {}
    for item in options:
        if "=" not in item:
            raise ConfigError(f"--cfg-options expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def load_config(path: str | Path, kind: str = "train", cfg_options: Iterable[str] | dict | None = None,
                cli: dict | None = None) -> Config:
    """Reads a config file, applies `--cfg-options` then explicit CLI flags, and validates.

    `cli` maps entry-script flag names (see CLI_KEYS) to values; None values are ignored.
    """
    if kind not in ("train", "inference", "encode"):
        raise ValueError(f"load_config: kind must be 'train', 'inference' or 'encode', got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    cfg = Config.fromfile(str(path))
    overrides = parse_options(cfg_options)
    for flag, value in (cli or {}).items():
        if flag not in CLI_KEYS:
            raise ConfigError(f"no config key for command-line flag '{flag}'")
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"--{flag.replace('_', '-')} is empty ({value!r}; config key {CLI_KEYS[flag]}): "
                              "pass a value, or leave the flag out (an unset shell variable?)")
        if value is not None:
            overrides[CLI_KEYS[flag]] = value
    # Unknown dotted keys must fail, not create new entries: check before merging.
    schema = Config.fromfile(str(schema_path(kind))).to_dict()
    errors: list[str] = []
    for dotted in overrides:
        node, prefix = schema, ""
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                level = node if isinstance(node, dict) else {}
                errors.append(_unknown_key(dotted, part, prefix, level, " in overrides"))
                break
            node, prefix = node[part], prefix + part + "."
    if errors:
        raise ConfigError("invalid overrides:\n  " + "\n  ".join(errors))
    if overrides:
        cfg.merge_from_dict(overrides)
    validate(cfg, kind)
    cfg.config_path = str(path)
    return cfg


# ----------------------------------------------------------------------------- adversarial phase
# The `discriminator` dict's keys: StyleGANDiscriminator3D's architecture (its image size and
# window length are the dataset's image_size and num_frames).
DISCRIMINATOR_KEYS = {"filters": int, "channel_multipliers": (list, tuple), "num_groups": int}


def _adversarial_rules() -> dict[str, Rule]:
    from .losses import DISCRIMINATOR_LOSS_TYPES, GENERATOR_LOSS_TYPES
    from .training.schedule import LR_SCHEDULE_KINDS

    return {
        "discriminator_start": at_least(-1),
        "discriminator_factor": at_least(0),
        "generator_factor": at_least(0),
        "generator_loss_type": one_of(*GENERATOR_LOSS_TYPES),
        "discriminator_loss_type": one_of(*DISCRIMINATOR_LOSS_TYPES),
        "lecam_loss_weight": optional(at_least(0)),
        "gradient_penalty_loss_weight": optional(at_least(0)),
        "discriminator_lr": above(0),
        "discriminator_adam_betas": each(within(0, 1, high_open=True), length=2),
        "discriminator_adam_eps": above(0),
        "discriminator_weight_decay": at_least(0),
        "discriminator_grad_clip": optional(above(0)),
        "discriminator_lr_schedule.kind": one_of(*LR_SCHEDULE_KINDS),
        "discriminator_lr_schedule.warmup_steps": at_least(0),
        "discriminator_lr_schedule.min_lr_ratio": within(0, 1),
    }


def _check_discriminator(data: dict, errors: list[str]) -> None:
    """The discriminator's keys and types, and whether it can be built for the dataset's clips
    (built on the meta device: no memory, the model's own size checks)."""
    arch = data.get("discriminator")
    if arch is None:
        return
    bad = False
    for key, value in arch.items():
        if key not in DISCRIMINATOR_KEYS:
            close = [k for k in DISCRIMINATOR_KEYS if _similar(k, key)]
            hint = f" (did you mean {', '.join(repr('discriminator.' + c) for c in close)}?)" if close else ""
            errors.append(f"unknown key 'discriminator.{key}'{hint}; its keys are {', '.join(DISCRIMINATOR_KEYS)}")
            bad = True
        elif not _matches(value, DISCRIMINATOR_KEYS[key]) or (
                key == "channel_multipliers" and not (value and all(_matches(m, int) and m >= 1 for m in value))) or (
                key != "channel_multipliers" and value < 1):
            errors.append(f"'discriminator.{key}' = {value!r}: must be "
                          + ("a non-empty list of integers >= 1" if key == "channel_multipliers" else "an integer >= 1"))
            bad = True
    if not data.get("use_real_rec_loss"):
        errors.append("'discriminator' is set: the discriminator judges decoded pixels, so it needs "
                      "use_real_rec_loss=True (stage 3)")
    if bad:
        return
    import torch

    from .models.discriminator import StyleGANDiscriminator3D

    dataset = data.get("dataset", {})
    try:
        with torch.device("meta"):
            StyleGANDiscriminator3D(image_size=dataset.get("image_size"), num_frames=dataset.get("num_frames"),
                                    **arch)
    except ValueError as err:  # sizes (the model's checks) or GroupNorm channel/group counts
        errors.append(f"'discriminator' = {arch!r} does not fit dataset.image_size "
                      f"{tuple(dataset.get('image_size'))} / num_frames {dataset.get('num_frames')}: {err}")

# ----------------------------------------------------------------------------- architecture
# The sizes a train config's `model` section or a checkpoint's config.json may describe, checked
# before anything is built: a zero group count or a negative width would otherwise surface as a
# ZeroDivisionError or a torch RuntimeError deep in a constructor, and an absurd width would try to
# allocate it. The ceilings are far above any real model (the released one is 512 channels wide,
# 4 levels, 4 blocks per level).
MAX_CHANNELS = 8192
MAX_BLOCKS = 64
MAX_LEVELS = 8


def _count(high: int) -> Rule:
    def rule(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= high
        return None if ok else f"an integer in [1, {high}]"
    return rule


@functools.lru_cache(maxsize=None)
def _read(path: Path) -> dict:
    return Config.fromfile(str(path)).to_dict()


def model_defaults() -> dict:
    """The `model` section of the schema (configs/vae/_base_/model_v1_2.py): the released
    Open-Sora 1.2 pipeline. The one place its sizes, latent statistics and spatial VAE live; code
    that needs them (a config.json lacking keys, the models' defaults) reads them here."""
    return copy.deepcopy(_read(schema_path("model"))["model"])


def released_checkpoint() -> str:
    """Hub id of the released pipeline checkpoint: `ckpt_path` of configs/vae/inference/video.py
    (its one place; inference/image.py inherits it)."""
    return _read(CONFIG_DIR / "inference" / "video.py")["ckpt_path"]


def architecture_problems(temporal: dict, spatial: dict | None, settings: dict,
                          names: tuple[str, str, str] = ("model.temporal.", "model.spatial.config.", "model.")
                          ) -> list[str]:
    """What is wrong with a pipeline's sizes (empty when it can be built).

    `temporal`: TemporalVAE arguments (all of them); `spatial`: an AutoencoderKL config (None = the
    bundled SDXL one); `settings`: any of micro_frame_size, micro_batch_size, scaling_factor, shift,
    scale. `names`: the key prefixes of the three parts in the caller's format, for the messages.
    """
    t_name, s_name, p_name = names
    problems: list[str] = []

    def check(name: str, value: Any, rule: Rule) -> bool:
        want = rule(value)
        if want is not None:
            problems.append(f"'{name}' = {value!r}: must be {want}")
        return want is None

    channels, blocks = _count(MAX_CHANNELS), _count(MAX_BLOCKS)
    t_ok = all([check(t_name + k, temporal.get(k), channels)
                for k in ("in_out_channels", "latent_embed_dim", "embed_dim", "filters", "num_groups")]
               + [check(t_name + "num_res_blocks", temporal.get("num_res_blocks"), blocks)])
    mults = temporal.get("channel_multipliers")
    if check(t_name + "channel_multipliers", mults, each(_count(MAX_CHANNELS))) and t_ok:
        widths = [temporal["filters"] * m for m in [1, *mults]]
        check(t_name + "channel_multipliers", mults, lambda v: None if len(v) <= MAX_LEVELS and max(widths) <= MAX_CHANNELS
              else f"at most {MAX_LEVELS} levels of at most {MAX_CHANNELS} channels (filters x multiplier)")
        check(t_name + "num_groups", temporal["num_groups"], lambda g: None if all(w % g == 0 for w in widths)
              else f"a divisor of every level's channels {sorted(set(widths))} (GroupNorm)")
        down = temporal.get("temporal_downsample")
        check(t_name + "temporal_downsample", down, lambda v: None if isinstance(v, (list, tuple)) and len(v) == len(mults) - 1
              and all(isinstance(x, bool) for x in v) else f"a list of {len(mults) - 1} bools (one per level transition)")
    if spatial is not None:  # keys it lacks take diffusers' defaults
        s_ok = all([check(s_name + k, spatial[k], channels)
                    for k in ("in_channels", "out_channels", "latent_channels", "norm_num_groups") if k in spatial]
                   + [check(s_name + "layers_per_block", spatial[k], blocks) for k in ("layers_per_block",) if k in spatial])
        widths = spatial.get("block_out_channels")
        if (widths is None or check(s_name + "block_out_channels", widths, each(channels))) and s_ok \
                and {"block_out_channels", "norm_num_groups", "latent_channels"} <= set(spatial):
            check(s_name + "block_out_channels", widths, lambda v: None if len(v) <= MAX_LEVELS else f"at most {MAX_LEVELS} levels")
            check(s_name + "norm_num_groups", spatial["norm_num_groups"], lambda g: None if all(w % g == 0 for w in widths)
                  else f"a divisor of every block's channels {widths} (GroupNorm)")
        if s_ok and t_ok and "latent_channels" in spatial:
            check(t_name + "in_out_channels", temporal["in_out_channels"], lambda c: None if c == spatial["latent_channels"]
                  else f"the spatial VAE's latent_channels ({spatial['latent_channels']})")
    spatial_name = s_name.removesuffix("config.")  # micro_batch_size, scaling_factor sit beside the config
    for key, rule in (("micro_frame_size", optional(_count(1 << 20))), ("micro_batch_size", optional(_count(1 << 20))),
                      ("scaling_factor", above(0))):
        if key in settings:
            check((p_name if key == "micro_frame_size" else spatial_name) + key, settings[key], rule)
    embed = temporal.get("embed_dim")
    for key, rule in (("shift", at_least(float("-inf"))), ("scale", above(0))):
        if key in settings and check(p_name + key, settings[key], each(rule)) and isinstance(embed, int):
            check(p_name + key, settings[key], lambda v: None if len(v) == embed
                  else f"one value per latent channel (embed_dim = {embed})")
    return problems
