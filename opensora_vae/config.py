"""Config loading: mmengine Python configs, CLI overrides, and rejection of unknown keys.

Every key a config may set is defined, with its default, in `configs/vae/_base_/default_*.py`
(the schema). A key outside the schema, or a value of the wrong type, is an error before any
work starts: a typo must never be silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

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
    """A config that names unknown keys or holds values of the wrong type."""


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


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


def validate(cfg: Config | dict, kind: str) -> None:
    schema = Config.fromfile(str(schema_path(kind))).to_dict()
    data = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    errors: list[str] = []
    _validate(data, schema, "", errors, TYPES_WHEN_SET.get(kind, {}))
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
