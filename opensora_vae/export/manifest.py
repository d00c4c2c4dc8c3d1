"""The export's stamp: what made the latents, so that a resumed run cannot mix in latents of
another VAE, window or CSV, and a reader can refuse latents of a VAE it does not expect.

`manifest.json` holds the stamp's keys (STAMP_KEYS, compared on resume), informational keys
(`ckpt_path`, `data_path`) and, once the export is complete, `complete: true`, the counts and
`stats` (per-channel `mean` and `std` of the un-normalised latent means over every exported clip,
also as `shift`/`scale`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .storage import ExportError

FORMAT = "opensora_vae.latents/1"
STAMP_KEYS = ("format", "package_version", "vae", "window", "compute", "storage", "data")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opensora_vae")
    except PackageNotFoundError:  # a source checkout that was never pip-installed
        import re

        setup = Path(__file__).resolve().parents[2] / "setup.py"
        found = re.search(r'version="([^"]+)"', setup.read_text()) if setup.is_file() else None
        return found.group(1) if found else "unknown"


def stamp_mismatches(existing: dict, stamp: dict) -> list[str]:
    """The stamp keys (dotted, one level down) on which an existing manifest differs."""
    out = []
    for key in STAMP_KEYS:
        old, new = existing.get(key), stamp.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        else:
            out.append(key)
    return out


def read_manifest(folder: Path) -> dict | None:
    from .storage import MANIFEST_NAME

    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{path} is unreadable ({err}): not an export folder, or a damaged one") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ExportError(f"{path} is not a latent export manifest (format {FORMAT})")
    return data


def make_stamp(*, vae_config: dict, weights_sha256: str, shift: list[float], scale: list[float],
               micro_frame_size: int | None, window: dict[str, Any], compute: dict[str, Any], storage: dict[str, Any],
               data_sha256: str, num_rows: int) -> dict:
    return {
        "format": FORMAT,
        "package_version": package_version(),
        "vae": {"config": vae_config, "weights_sha256": weights_sha256, "shift": shift, "scale": scale,
                "micro_frame_size": micro_frame_size},
        "window": window,
        "compute": compute,
        "storage": storage,
        "data": {"sha256": data_sha256, "num_rows": num_rows},
    }
