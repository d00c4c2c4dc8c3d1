"""The quickstart demo on the bundled CC0 sample (CPU, tiny configs, under 15 minutes).

    bash scripts/quickstart.sh [--out-dir demo_runs/quickstart] [--spatial-vae PATH_OR_HUB_ID]
    python -m examples.quickstart [...]          (from the repository root, venv active)

Builds train/held-out CSVs from assets/media/, trains stage 0 (tiny spatial VAE, demo only),
stages 1 -> 2 -> 3, reconstructs the held-out clips, evaluates them and prints the results.
"""

import argparse
import sys
from typing import Sequence

from opensora_vae.cli import run_cli  # first: sets the CPU thread policy before torch loads


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from .run import DemoSettings

    d = DemoSettings()
    parser = argparse.ArgumentParser(prog="python -m examples.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=str(d.out_dir), help="run folder (an earlier quickstart run there is replaced)")
    parser.add_argument("--spatial-vae", help="pretrained diffusers AutoencoderKL (dir or hub id) instead of stage 0")
    parser.add_argument("--stage0-steps", type=int, default=d.stage0_steps)
    parser.add_argument("--steps", type=int, nargs=3, default=[d.steps[k] for k in (1, 2, 3)],
                        metavar=("S1", "S2", "S3"), help="training steps of stages 1, 2, 3")
    parser.add_argument("--lrs", type=float, nargs=3, default=[d.lrs[k] for k in (1, 2, 3)],
                        metavar=("LR1", "LR2", "LR3"), help="learning rates of stages 1, 2, 3")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .run import DemoError, DemoSettings, run_quickstart

    settings = DemoSettings(out_dir=args.out_dir, spatial_vae=args.spatial_vae, stage0_steps=args.stage0_steps,
                            steps=dict(zip((1, 2, 3), args.steps)), lrs=dict(zip((1, 2, 3), args.lrs)))
    try:
        run_quickstart(settings)
    except DemoError as err:  # a stage failed: its own output above says why
        print(f"quickstart failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
