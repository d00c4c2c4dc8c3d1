"""Config loading: mmengine Python configs, CLI overrides, and rejection of unknown keys.

Every key a config may set is defined, with its default, in `configs/vae/_base_/default_*.py`
(the schema). A key outside the schema, a value of the wrong type, or one outside its choices or
range (`_rules`) is an error before any work starts: a typo must never be silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

from mmengine.config import Config, DictAction
from .errors import UserError

REPO_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "vae"
SCHEMAS = {"train": "default_train.py", "inference": "default_inference.py"}

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
    path = REPO_CONFIG_DIR / "_base_" / SCHEMAS[kind]
    if not path.is_file():
        raise FileNotFoundError(f"config schema {path} is missing (run from a checkout of the repo)")
    return path


# Keys whose schema default is None ("unset") still have one type when they are set.
PATH = (str, os.PathLike)
TYPES_WHEN_SET = {
    "train": {"max_steps": int, "ema_decay": float, "ckpt_path": PATH, "load": PATH,
              "perceptual_backbone_path": PATH, "dataset.data_path": PATH, "model.from_pretrained": PATH,
              "model.spatial.config": dict},
    "inference": {"num_samples": int, "ckpt_path": PATH, "dataset.data_path": PATH,
                  "model.from_pretrained": PATH, "model.spatial.config": dict},
}


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


def _validate(cfg: dict, schema: dict, prefix: str, errors: list[str], when_set: dict) -> None:
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if key not in schema:
            close = [k for k in schema if _similar(k, key)]
            hint = f" (did you mean {', '.join(repr(prefix + c) for c in close)}?)" if close else ""
            errors.append(f"unknown key '{name}'{hint}")
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


def _non_empty_path(v: Any) -> str | None:
    return None if isinstance(v, (str, os.PathLike)) and str(v).strip() else "a non-empty path"


def _rules(kind: str) -> dict[str, Rule]:
    from .data.transforms import TRANSFORM_NAMES
    from .precision import DTYPES

    shared = {
        "dataset.num_frames": at_least(1),
        "dataset.frame_interval": at_least(1),
        "dataset.image_size": each(at_least(1), length=2),
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
    for key in ("in_out_channels", "latent_embed_dim", "embed_dim", "filters", "num_res_blocks", "num_groups"):
        shared[f"model.temporal.{key}"] = at_least(1)
    shared["model.temporal.channel_multipliers"] = each(at_least(1))
    if kind == "inference":
        return {**shared, "num_samples": optional(at_least(1)), "fps": above(0), "save_dir": _non_empty_path}
    from .training.mixing import MIXED_STRATEGIES

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
        "preflight_rows": at_least(0),
        "preflight_clips": at_least(0),
        "preflight_min_psnr": at_least(0),
    }


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
                          + f"\nevery valid key is listed in {schema_path(kind)}")


def parse_options(options: Iterable[str] | dict | None) -> dict:
    """`["a.b=1", "c=[1,2]"]` → {"a.b": 1, "c": [1, 2]} with mmengine's value parsing."""
    if options is None:
        return {}
    if isinstance(options, dict):
        return dict(options)
    out: dict = {}
    for item in options:
        if "=" not in item:
            raise ConfigError(f"--cfg-options expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key] = DictAction._parse_iterable(value)
    return out


def load_config(path: str | Path, kind: str = "train", cfg_options: Iterable[str] | dict | None = None,
                cli: dict | None = None) -> Config:
    """Reads a config file, applies `--cfg-options` then explicit CLI flags, and validates.

    `cli` maps entry-script flag names (see CLI_KEYS) to values; None values are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    cfg = Config.fromfile(str(path))
    overrides = parse_options(cfg_options)
    for flag, value in (cli or {}).items():
        if flag not in CLI_KEYS:
            raise ConfigError(f"no config key for command-line flag '{flag}'")
        if value is not None:
            overrides[CLI_KEYS[flag]] = value
    # Unknown dotted keys must fail, not create new entries: check before merging.
    schema = Config.fromfile(str(schema_path(kind))).to_dict()
    errors: list[str] = []
    for dotted in overrides:
        node = schema
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                errors.append(f"unknown key '{dotted}' in overrides")
                break
            node = node[part]
    if errors:
        raise ConfigError("invalid overrides:\n  " + "\n  ".join(errors))
    if overrides:
        cfg.merge_from_dict(overrides)
    validate(cfg, kind)
    cfg.config_path = str(path)
    return cfg
