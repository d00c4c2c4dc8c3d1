"""What held-out validation costs: seconds per validation clip, and its share of training time
with the default settings (`val_every`, `val_max_clips` of configs/vae/_base_/default_train.py).

    python benchmarks/bench_val.py [--model full|tiny] [--stage 1] [--clips 4] [--steps 3] [--no-write]

Builds a trainer of stage `--stage` (the real stage config; `--model tiny` its tiny variant) with
validation on, on the bundled 17-frame 256x256 clip (`--clips` rows for validation and training),
then times `--steps` training steps (the first is dropped as warm-up when there are more) and one
validation of the raw weights through the trainer's own components (`Trainer.train_step`,
`Validator.run`), so the numbers are those of a real run on this machine. `--model full` is the
released architecture (393 M parameters) with random weights: cost depends on the shapes, not the
values. The share is

    share = V * c / (E * s + V * c)

with c the seconds per validation clip, s the seconds per training step, E = val_every and
V = val_max_clips (the defaults), and twice the validation with EMA on (raw and EMA weights).
Writes its section of benchmarks/RESULTS.md (`results_md.write_section`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "assets" / "media" / "city_cc0_256_17f.mp4"
SECTION = "bench_val"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("full", "tiny"), default="full")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), default=1)
    p.add_argument("--clips", type=int, default=4, help="validation clips timed")
    p.add_argument("--steps", type=int, default=3, help="training steps timed (the first is warm-up)")
    p.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    return p.parse_args(argv)


def _config(args, root: Path):
    from opensora_vae.config import load_config

    csv, train_csv = root / "clips.csv", root / "train.csv"
    csv.write_text("path\n" + "\n".join([str(CLIP)] * args.clips) + "\n")
    train_csv.write_text("path\n" + "\n".join([str(CLIP)] * args.steps) + "\n")
    folder = REPO / "configs" / "vae" / "train" / ("tiny" if args.model == "tiny" else "")
    options = {"max_steps": args.steps, "val_data_path": str(csv), "val_max_clips": args.clips,
               "num_workers": 0, "dataset.image_size": [256, 256], "wandb": False, "preview_every": 0}
    if args.model == "full":
        sdxl = json.loads((REPO / "opensora_vae" / "models" / "configs" / "sdxl_vae.json").read_text())
        options.update({"model.spatial.from_pretrained": None, "model.spatial.config": {**sdxl, "_delete_": True}})
    return load_config(folder / f"stage{args.stage}.py", cfg_options=options,
                       cli={"outputs": str(root / "out"), "data_path": str(train_csv)})


def measure(args) -> dict:
    import torch
    from mmengine.config import Config

    from opensora_vae.training import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args, Path(tmp))
        trainer = Trainer(cfg)
        try:
            step_seconds = []
            batches = iter(trainer.loader)
            for step in range(1, args.steps + 1):
                video = next(batches)["video"].to(trainer.env.device)
                start = time.perf_counter()
                trainer.train_step(video, step)
                if trainer.env.device.type == "cuda":
                    torch.cuda.synchronize()
                step_seconds.append(time.perf_counter() - start)
            timed = step_seconds[1:] or step_seconds
            start = time.perf_counter()
            line = trainer.validator.run(args.steps, trainer.pipe.state_dict(), None, trainer.pipe.export_config())[0]
            val_seconds = time.perf_counter() - start
        finally:
            trainer.close()
    defaults = Config.fromfile(str(REPO / "configs" / "vae" / "_base_" / "default_train.py"))
    step_s, clip_s = statistics.median(timed), val_seconds / line["num_clips"]
    validation = {ema: defaults.val_max_clips * clip_s * k for ema, k in (("off", 1), ("on", 2))}
    share = {ema: v / (defaults.val_every * step_s + v) for ema, v in validation.items()}
    return {"model": args.model, "stage": args.stage, "frames": cfg.dataset.num_frames, "size": 256,
            "dtype": cfg.dtype, "device": str(trainer.env.device), "metrics": list(cfg.val_metrics),
            "clips": line["num_clips"], "steps_timed": len(timed), "step_seconds": step_s,
            "step_seconds_all": step_seconds, "val_seconds": val_seconds, "clip_seconds": clip_s,
            "val_every": defaults.val_every, "val_max_clips": defaults.val_max_clips,
            "per_validation_seconds": defaults.val_max_clips * clip_s, "share": share}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores available)"


def section(r: dict) -> str:
    return "\n".join([
        "## Validation in the loop (`benchmarks/bench_val.py`)",
        "",
        f"Command: `python benchmarks/bench_val.py --model {r['model']} --stage {r['stage']} --clips {r['clips']} "
        f"--steps {len(r['step_seconds_all'])}` on "
        f"{_device_name(r['device'])}; {r['model']} architecture, stage {r['stage']}, {r['frames']} frames at "
        f"{r['size']}x{r['size']}, dtype {r['dtype']}, metrics {', '.join(r['metrics'])}.",
        "",
        "| training step (s) | validation per clip (s) | one validation at the defaults (s) "
        "| share of training time, EMA off | EMA on (raw + EMA) |",
        "|---:|---:|---:|---:|---:|",
        f"| {r['step_seconds']:.3f} | {r['clip_seconds']:.3f} | {r['per_validation_seconds']:.1f} "
        f"| {100 * r['share']['off']:.2f} % | {100 * r['share']['on']:.2f} % |",
        "",
        f"Defaults: val_every = {r['val_every']} steps, val_max_clips = {r['val_max_clips']}. Share = "
        "V·c / (E·s + V·c) with the measured c (per clip) and s (per step, median of "
        f"{r['steps_timed']} after a warm-up step). A validation clip costs one no-grad posterior-mode "
        "reconstruction (spatial encode, temporal encode/decode, spatial decode) plus the metrics; a training "
        "step also runs backward (and, in stage 1, no spatial decode). Wall times; other jobs may share the "
        "machine." + (" The tiny architecture spends relatively more in the metrics (their cost does not shrink "
                      "with the model): `--model full` on a GPU measures the released architecture."
                      if r["model"] == "tiny" else ""),
    ])


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(args)
    print(json.dumps(result, indent=1))
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results_md import write_section  # the one RESULTS.md section writer

        write_section(SECTION, section(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
