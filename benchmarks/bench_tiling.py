"""Error of the tiled paths vs untiled on real frames, with a trained (demo) checkpoint.

    python benchmarks/bench_tiling.py --ckpt demo_runs/quickstart/stage3/step_XXXXXXXXX/model

Takes 17 frames of the bundled 720x405 clip (centre crop to 384x640, a multiple of 64), and
reconstructs them untiled, with the temporal VAE tiled (32x32 latent tiles, overlap 8), and with
both the temporal VAE and diffusers' spatial tiling on. Prints PSNR of each against the input and
the PSNR between tiled and untiled reconstructions (higher = closer).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from opensora_vae.data.video_io import read_video_frames  # noqa: E402
from opensora_vae.models import VideoVAEPipeline  # noqa: E402

CLIP = Path(__file__).resolve().parents[1] / "assets/media/city_cc0_0-99.mp4"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).square().mean().item()
    return 100.0 if mse < 1e-10 else -10 * torch.log10(torch.tensor(mse)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--overlap", type=int, default=8)
    args = parser.parse_args()

    frames = torch.from_numpy(read_video_frames(str(CLIP), list(range(17)))).float() / 127.5 - 1
    x = frames.permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    h0 = (x.shape[-2] - args.height) // 2
    w0 = (x.shape[-1] - args.width) // 2
    x = x[..., h0:h0 + args.height, w0:w0 + args.width].contiguous()

    pipe = VideoVAEPipeline.from_pretrained(args.ckpt).eval()
    results = {}
    for name, setup in (("untiled", lambda: pipe.disable_tiling()),
                        ("temporal tiled", lambda: pipe.enable_tiling(args.tile, args.overlap, spatial=False)),
                        ("temporal + spatial tiled", lambda: pipe.enable_tiling(args.tile, args.overlap, spatial=True))):
        setup()
        t0 = time.perf_counter()
        rec = pipe.reconstruct(x).rec
        results[name] = (rec, time.perf_counter() - t0)
    pipe.disable_tiling()
    ref = results["untiled"][0]
    print(f"checkpoint {args.ckpt}; 17 frames {args.height}x{args.width}; latent tile {args.tile}, overlap {args.overlap}")
    for name, (rec, dt) in results.items():
        print(f"{name:26s} PSNR vs input {psnr(rec, x):6.2f} dB   vs untiled {psnr(rec, ref):6.2f} dB   "
              f"max |diff| vs untiled {(rec - ref).abs().max().item():.4f}   {dt:.1f} s")


if __name__ == "__main__":
    main()
