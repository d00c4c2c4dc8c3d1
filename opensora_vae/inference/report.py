"""The metrics report (`<save_dir>_metrics.json`) and its printed summary.

The report uses the eval's schema (`metrics.summary.summarize_results`, the JSON of
`eval/vae/eval_common_metric.py`): at the top level for `_rec` vs `_ori` (`real_video_dir`,
`generated_video_dir`, `psnr`, `ssim`, `psnr_ci95`, `ssim_ci95`, `per_video`, `num_videos`,
`num_frames_evaluated`, `skipped`, `num_skipped`, `warnings`, `protocol`, ...), and the same block
under `spatial` for `_spatial` vs `_ori`. The inference keys (`mean`, `samples`, `num_samples`,
`num_frames`, `checkpoint`, `config`, `latent_stats`, `sources`, ...) stay beside them; `mean` holds
the same values as the blocks' `psnr`/`ssim`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..metrics.psnr import psnr
from ..metrics.ssim import ssim
from .latent_stats import LatentStats
from .outputs import OutputLayout

FRAME_METRICS = ("psnr", "ssim")  # per-frame metrics of every sample (the eval has more)
KINDS = ("rec", "spatial")


def frame_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, list[float]]:
    """Per-frame PSNR and SSIM (eval protocol) of uint8 (T, H, W, 3) frames, one frame at a time:
    memory is one float64 frame pair whatever the clip length (a frame's values depend on that
    frame alone, so they equal the whole-clip computation bit for bit)."""
    values: dict[str, list[float]] = {m: [] for m in FRAME_METRICS}
    for t in range(real.shape[0]):
        a, b = _as_unit(real[t : t + 1]), _as_unit(fake[t : t + 1])
        values["psnr"].append(float(psnr(a, b)[0]))
        values["ssim"].append(float(ssim(a, b)[0]))
    return values


def _as_unit(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float64) / 255.0


def _sample_entry(record: dict) -> dict:
    entry = {k: record[k] for k in ("name", "index", "path", "is_image", "num_frames", "nonfinite")}
    for kind in KINDS:
        frames = record[kind]
        entry[kind] = {m: float(np.mean(frames[m])) for m in FRAME_METRICS}
        entry[kind].update({f"{m}_frames": frames[m] for m in FRAME_METRICS})
    return entry


# What the eval's protocol card says differently for inference's metrics: they are computed on
# the frames as written (before video compression) at the model's input size.
INFERENCE_PROTOCOL = {
    "resize": "none: frames at the model's input size (dataset.image_size, dataset.transform_name)",
    "crop": "none beyond the dataset's transform",
    "value_range": "uint8 frames as written / 255, float64, before video compression",
    "pairing": "by output name (`sources` maps each name to its CSV row's path)",
}


def eval_settings(cfg: Any) -> Any:
    """The eval settings that describe inference's metrics (PSNR and SSIM of every sample, its
    frames 0, s, 2s, ... as the dataset read them, at their size)."""
    from ..metrics.settings import EvalSettings

    return EvalSettings.from_config(cfg, metrics=FRAME_METRICS, resolution=None, crop_size=None, device="cpu")


def _eval_block(records: list[dict], kind: str, skipped: list[dict], settings: Any,
                layout: OutputLayout) -> dict:
    """The eval's result for `_<kind>` vs `_ori`, from the per-frame values inference computed."""
    from ..metrics.evaluate import ClipResult
    from ..metrics.summary import summarize_results

    stride = settings.sample_rate
    results = [ClipResult(index=r["index"], name=r["name"], num_frames=r["num_frames"],
                          frame_indices=[0] if r["is_image"] else list(range(0, stride * r["num_frames"], stride)),
                          values={m: r[kind][m] for m in settings.metrics},
                          means={m: float(np.mean(r[kind][m])) for m in settings.metrics},
                          real=str(r["files"]["ori"]), generated=str(r["files"][kind]))
               for r in records]
    block = {"real_video_dir": str(layout.ori.resolve()), "generated_video_dir": str(getattr(layout, kind).resolve()),
             **summarize_results(results, settings, skipped=skipped)}
    block["protocol"].update(INFERENCE_PROTOCOL)
    return block


def summarize(cfg: Any, records: list[dict], skipped: list[dict], stats: LatentStats | None, pipe,
              layout: OutputLayout, names: dict[int, str], paths: Any, ckpt_path: str, resolved_ckpt: str, device,
              world_size: int, seconds: float) -> dict:
    """Means are over all (sample, frame) pairs, the eval protocol's reported value; metrics are
    on the uint8 frames as written, before video compression (with `lossless=True` the eval of
    the files reproduces them). ``names``: row -> output name of every row of the run;
    ``skipped``: ``{"name", "index", "path", "reason"}`` of the rows that could not be used."""
    settings = eval_settings(cfg)
    blocks = {kind: _eval_block(records, kind, skipped, settings, layout) for kind in KINDS}
    nonfinite = [{"index": r["index"], "path": r["path"], **r["nonfinite"]} for r in records
                 if any(r["nonfinite"].values())]
    report = {
        **blocks["rec"],
        "spatial": blocks["spatial"],
        "checkpoint": str(ckpt_path),
        "checkpoint_resolved": str(resolved_ckpt),
        "config_path": cfg.get("config_path"),
        "data_path": str(cfg.dataset.data_path),
        "num_rows": len(records) + len(skipped),
        "num_samples": len(records),
        "num_frames": sum(r["num_frames"] for r in records),
        # Samples whose reconstruction held NaN/inf (counts of such values per output).
        "num_nonfinite": len(nonfinite),
        "nonfinite_samples": nonfinite,
        # The eval blocks' psnr/ssim, under the names earlier reports used.
        "mean": {kind: {m: blocks[kind][m] for m in FRAME_METRICS} for kind in KINDS},
        "mean_over": "all (sample, frame) pairs, on uint8 frames before video compression",
        "dirs": {"ori": str(layout.ori), "rec": str(layout.rec), "spatial": str(layout.spatial),
                 "grid": str(layout.grid) if layout.grid is not None else None},
        # Output name -> the CSV row's source path, for every row (skipped ones too).
        "output_names": cfg.output_names,
        "sources": {names[i]: paths[i] for i in sorted(names)},
        "device": str(device),
        "world_size": world_size,
        "seconds": round(seconds, 2),
        "samples": [_sample_entry(r) for r in records],
        # The architecture as loaded from the checkpoint (with the config's chunk sizes); the
        # config's own model section is only the full-size default and is left out.
        "model": pipe.export_config(),
        "config": {k: v for k, v in (cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)).items()
                   if k != "model"},
    }
    if stats is not None:
        report["latent_stats"] = stats.summary()
        report["latent_stats"]["checkpoint_shift"] = pipe.shift.flatten().tolist()
        report["latent_stats"]["checkpoint_scale"] = pipe.scale.flatten().tolist()
    return report


def format_summary(report: dict) -> str:
    lines = [f"{report['num_samples']} samples ({report['num_frames']} frames) reconstructed with "
             f"{report['checkpoint']}, {report['num_skipped']} skipped, in {report['seconds']:.1f} s",
             f"{'vs ori':<10}{'PSNR':>10}{'SSIM':>10}"]
    for kind in KINDS:
        lines.append(f"{kind:<10}{report['mean'][kind]['psnr']:>10.4f}{report['mean'][kind]['ssim']:>10.4f}")
    for s in report["skipped"]:
        lines.append(f"skipped {s['index']} {s['path']}: {s['reason']}")
    for s in report["nonfinite_samples"]:
        lines.append(f"NON-FINITE reconstruction {s['index']} {s['path']}: "
                     + ", ".join(f"{k} {s[k]} values" for k in KINDS if s[k]))
    stats = report.get("latent_stats")
    if stats:
        lines.append(f"latent stats over {stats['count_per_channel']} values per channel "
                     "(shift = mean, scale = std):")
        lines.append(f"{'channel':<10}{'mean':>10}{'std':>10}{'ckpt shift':>12}{'ckpt scale':>12}")
        for c, (m, s, cs, cc) in enumerate(zip(stats["mean"], stats["std"], stats["checkpoint_shift"],
                                               stats["checkpoint_scale"])):
            lines.append(f"{c:<10}{m:>10.4f}{s:>10.4f}{cs:>12.4f}{cc:>12.4f}")
    lines.append(f"outputs: {report['dirs']['ori']}, {report['dirs']['rec']}, {report['dirs']['spatial']}"
                 + (f", {report['dirs']['grid']}" if report['dirs']['grid'] else ""))
    return "\n".join(lines)
