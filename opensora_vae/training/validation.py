"""Held-out validation in the training loop: the eval's numbers on the same clips, every
`val_every` steps and after the last step.

What a validation of the weights of step k computes is, by construction, what a user gets from
running inference with checkpoint k on the same clips and then the eval CLI on the two folders
(`tests/training/test_validation.py` checks it to 1e-6):

- the first `val_max_clips` rows of `val_data_path`, each read with the eval protocol's window
  (`metrics/protocol.py`: frames 0, s, 2s, ... from the start, short side resized, centre crop),
  the same clips and frames every time; a row that cannot be read is skipped with its reason;
- the weights as the checkpoint holds them (raw, and EMA when `ema_decay` is set), loaded into an
  unsharded copy of the pipeline in eval mode; posterior mode (no sampling), `no_grad`, the
  training precision (`dtype` autocast) - what `scripts/inference_vae.py` does;
- the input and the reconstruction rounded to uint8 frames as inference writes them
  (`to_uint8_frames`), then scored as the eval scores a pair of files (`MetricSuite`), and each
  metric averaged over all (clip, frame) values with an exact sum, so 1 or N ranks (the clips
  are dealt round-robin) give the same number.

Results go where users look: TensorBoard `val/<metric>` (`val_ema/<metric>`) with a fixed
input|reconstruction preview of the first two clips, wandb when on, one line per weights in
`<outputs>/val_history.jsonl`, and the best step of `val_best_metric` in `<outputs>/val_best.json`
(that record is state: it is saved with each checkpoint and restored on resume).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..data.table import load_table
from ..data.video_io import MediaReadError, VideoFile, is_image, read_image
from ..distributed import DistEnv, all_gather_objects
from ..errors import UserError
from ..metrics.fvd import FVD_NUM_FRAMES, MIN_RELIABLE_VIDEOS
from ..metrics.protocol import frame_indices, preprocess
from ..precision import autocast
from .checkpoint import step_dir_name
from .ema import full_tensor

logger = logging.getLogger("opensora_vae.training")

HISTORY_NAME = "val_history.jsonl"
BEST_NAME = "val_best.json"
PREVIEW_CLIPS = 2  # the first readable clips of the table, shown as input | reconstruction (frame 0)
# Metrics where a smaller value is a better reconstruction; the others (ssim, psnr) are larger-better.
LOWER_IS_BETTER = frozenset({"lpips", "flolpips", "fvd"})


class ValidationError(UserError, ValueError):
    """A validation setting or table that cannot be used (checked before training starts)."""


def check_val_config(data: Mapping[str, Any]) -> list[str]:
    """The rules between validation keys (`config.py` checks each key's own type and range)."""
    metrics = tuple(data.get("val_metrics") or ())
    errors = []
    best = data.get("val_best_metric")
    if best not in metrics:
        errors.append(f"'val_best_metric' = {best!r}: must be one of val_metrics {list(metrics)}")
    if "fvd" in metrics:
        max_clips = data.get("val_max_clips")
        if max_clips is not None and max_clips < MIN_RELIABLE_VIDEOS:
            errors.append(f"'val_metrics' has fvd, a statistic of the set of clips, unreliable below "
                          f"{MIN_RELIABLE_VIDEOS} clips: set val_max_clips >= {MIN_RELIABLE_VIDEOS} (or None), "
                          "or leave fvd out")
        num_frames = (data.get("dataset") or {}).get("num_frames")
        if isinstance(num_frames, int) and num_frames < FVD_NUM_FRAMES:
            errors.append(f"'val_metrics' has fvd, which needs clips of >= {FVD_NUM_FRAMES} frames: "
                          f"dataset.num_frames is {num_frames}")
    return errors


@dataclass(frozen=True)
class ValWindow:
    """The clip window of validation: the training clip (`dataset.num_frames` frames at
    `dataset.frame_interval`, from frame 0) at `dataset.image_size` as the eval protocol sizes
    frames (short side to the smaller side, then a centre crop when the size is square)."""

    num_frames: int
    sample_rate: int
    resolution: int
    crop_size: int | None

    @classmethod
    def from_config(cls, cfg: Any) -> "ValWindow":
        height, width = (cfg.dataset.image_size, cfg.dataset.image_size) if isinstance(
            cfg.dataset.image_size, int) else tuple(cfg.dataset.image_size)
        return cls(num_frames=cfg.dataset.num_frames, sample_rate=cfg.dataset.frame_interval,
                   resolution=min(height, width), crop_size=height if height == width else None)

    def eval_flags(self) -> list[str]:
        """The eval CLI flags that score the inference outputs of these clips the same way (the
        files hold the selected frames already, hence stride 1)."""
        flags = ["--num_frames", str(self.num_frames), "--sample_rate", "1", "--resolution", str(self.resolution)]
        return flags + (["--crop_size", str(self.crop_size)] if self.crop_size else [])


class ClipSkipped(Exception):
    """A validation row that gives no clip (the message is the reason)."""


@dataclass
class ClipScore:
    """One clip's values: per frame (ssim, psnr, lpips), per frame pair (flolpips), I3D features."""

    index: int
    num_frames: int
    values: dict[str, list[float]] = field(default_factory=dict)
    features: tuple[torch.Tensor, torch.Tensor] | None = None  # (real, reconstruction) for fvd
    preview: torch.Tensor | None = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MediaReadError):
        return exc.reason
    if isinstance(exc, ClipSkipped):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Validator:
    """`Validator(cfg, env)` checks the table and settings (before any output exists); then the
    trainer calls `run(step, model_state, ema_state, pipeline_config)` on every rank at the same
    steps, with the live (possibly sharded) state dicts of the model and the EMA."""

    def __init__(self, cfg: Any, env: DistEnv):
        from ..metrics.evaluate import MetricSuite

        self.cfg, self.env = cfg, env
        self.outputs = Path(cfg.outputs).expanduser()
        self.window = ValWindow.from_config(cfg)
        table = load_table(cfg.val_data_path)  # TableError (a UserError) when missing or empty
        num = len(table) if cfg.val_max_clips is None else min(len(table), cfg.val_max_clips)
        if "fvd" in cfg.val_metrics and num < MIN_RELIABLE_VIDEOS:
            raise ValidationError(f"val_metrics has fvd but {cfg.val_data_path} has {num} clips to validate "
                                  f"(< {MIN_RELIABLE_VIDEOS}): fvd of so few clips is noise; add clips or "
                                  "leave fvd out of val_metrics")
        self.paths = [table[i] for i in range(num)]
        self.rows = list(range(num))[env.rank::env.world_size]  # round-robin: balanced, no overlap
        self.metrics = list(cfg.val_metrics)
        self.best_metric = cfg.val_best_metric
        # The networks once, before training: a missing LPIPS/I3D weights file fails now, not at step k.
        self.suite = MetricSuite(self.metrics, env.device)
        self.best: dict[str, Any] | None = None
        self.last_step = -1
        self._checkpoint_follows = False

    # ------------------------------------------------------------------ state (in the checkpoint)
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.last_step = int(state["last_step"])
        if self.env.is_main:
            self._truncate_history(self.last_step)
            self._write_best()

    # ------------------------------------------------------------------ the run
    def due(self, step: int, final: bool = False) -> bool:
        """Every `val_every` steps, and once at the final step."""
        return step != self.last_step and (final or step % self.cfg.val_every == 0)

    def run(self, step: int, model_state: Mapping[str, torch.Tensor], ema_state: Mapping[str, torch.Tensor] | None,
            pipeline_config: dict, logger_: Any = None, final: bool = False) -> list[dict[str, Any]]:
        """Validates the raw (and EMA) weights of `step` on every rank; returns the history lines
        (rank 0 also writes them, the scalars and the best record). The trainer calls it before
        it saves the checkpoint of `step` (every `ckpt_every` steps and at the `final` step), so
        that checkpoint holds this record, and the record names it."""
        self._checkpoint_follows = final or bool(self.cfg.ckpt_every and step % self.cfg.ckpt_every == 0)
        weights = {"raw": model_state}
        if ema_state is not None:
            weights["ema"] = {**model_state, **ema_state}  # frozen weights come from the model
        lines = []
        for name, state in weights.items():
            pipe = self._load(pipeline_config, state)
            lines.append(self._validate(pipe, step, name, logger_))
            del pipe  # the weights of an FSDP run were gathered for it: free them now
        self.last_step = step
        return lines

    def _load(self, pipeline_config: dict, state: Mapping[str, torch.Tensor]):
        """A plain module with `state`'s weights, even when training shards the model (FSDP):
        each rank scores its own clips, so the number of forward calls may differ between ranks.
        The weights are assigned, not copied: unsharded training tensors are shared, not doubled."""
        from ..models.pipeline import VideoVAEPipeline

        pipe = VideoVAEPipeline.from_config(pipeline_config, device="meta")
        # full_tensor: FSDP2 shards are gathered (a collective, in state_dict order on every rank).
        full = {name: full_tensor(t).detach() for name, t in state.items()}
        pipe.load_state_dict(full, strict=True, assign=True)
        return pipe.to(self.env.device).eval().requires_grad_(False)

    def read_clip(self, row: int) -> torch.Tensor:
        """(3, T, h, w) in [-1, 1]: the eval window of row `row` (an image or 1-frame video is one
        frame, as inference treats it)."""
        path, w = self.paths[row], self.window
        if is_image(path):
            frames = read_image(path)[None]
        else:
            with VideoFile(path) as video:
                total = video.num_frames
                indices = [0] if total == 1 else frame_indices(w.num_frames, w.sample_rate)
                if total <= indices[-1]:
                    raise ClipSkipped(f"too short ({total} frames < {indices[-1] + 1} needed for "
                                      f"{w.num_frames} frames at interval {w.sample_rate})")
                frames = video.read(indices)
        unit = preprocess(frames, w.resolution, w.crop_size)  # (T, 3, h, w) in [0, 1]
        return (unit * 2.0 - 1.0).permute(1, 0, 2, 3).contiguous()

    @torch.no_grad()
    def _score(self, pipe, row: int, preview: bool) -> ClipScore:
        from ..inference.outputs import to_uint8_frames

        device = self.env.device
        x = self.read_clip(row).unsqueeze(0).to(device)
        with autocast(device, self.cfg.dtype):
            rec = pipe.reconstruct(x, sample=False, rec=True).rec
        real_u8, rec_u8 = to_uint8_frames(x[0]), to_uint8_frames(rec[0])
        score = ClipScore(index=row, num_frames=real_u8.shape[0])
        # As the eval reads the written files: uint8 frames, preprocessed (identity at this size).
        real = preprocess(real_u8, self.window.resolution, self.window.crop_size, self.suite.device)
        fake = preprocess(rec_u8, self.window.resolution, self.window.crop_size, self.suite.device)
        for metric, values in self.suite.frame_metrics(real, fake).items():
            score.values[metric] = values.double().cpu().tolist()
        for metric, values in self.suite.batch_metrics(real, fake, [real.shape[0]]).items():
            if metric == "flolpips" and score.num_frames < 2:
                continue  # no frame pair: the eval leaves the clip out of the mean too
            score.values[metric] = values[0].double().tolist()
        if self.suite.i3d is not None:
            score.features = (self.suite.video_features([real]).cpu(), self.suite.video_features([fake]).cpu())
        if preview:
            from .logging import preview_image

            score.preview = preview_image(x[0, :, 0], rec[0, :, 0].to(x.dtype))
        return score

    def _validate(self, pipe, step: int, weights: str, logger_: Any) -> dict[str, Any]:
        start = time.perf_counter()
        scores, skipped = [], []
        for row in self.rows:
            try:
                # Each rank previews its first readable clips: among them are the table's first ones.
                scores.append(self._score(pipe, row, preview=len(scores) < PREVIEW_CLIPS))
            except (MediaReadError, ClipSkipped, OSError, ValueError) as exc:
                skipped.append({"index": row, "path": self.paths[row], "reason": _reason(exc)})
        gathered = all_gather_objects({"scores": scores, "skipped": skipped})
        scores = sorted((s for g in gathered for s in g["scores"]), key=lambda s: s.index)
        skipped = sorted((s for g in gathered for s in g["skipped"]), key=lambda s: s["index"])
        seconds = max(all_gather_objects(time.perf_counter() - start))
        line: dict[str, Any] = {"step": step, "weights": weights}
        line.update(merge_scores(scores, self.metrics))
        line.update(num_clips=len(scores), num_frames=sum(s.num_frames for s in scores), skipped=len(skipped),
                    skipped_clips=skipped, seconds=seconds)
        if self.env.is_main:
            self._report(line, scores, logger_)
        return line

    # ------------------------------------------------------------------ outputs (rank 0)
    def _report(self, line: dict[str, Any], scores: list[ClipScore], logger_: Any) -> None:
        step, weights = line["step"], line["weights"]
        prefix = "val" if weights == "raw" else f"val_{weights}"
        for item in line["skipped_clips"]:
            logger.warning("validation clip skipped: %s: %s", item["path"], item["reason"])
        if not line["num_clips"]:
            logger.warning("step %d: validation (%s weights) skipped every clip of %s: no values", step,
                           weights, self.cfg.val_data_path)
        self.outputs.mkdir(parents=True, exist_ok=True)
        with open(self.outputs / HISTORY_NAME, "a") as f:
            f.write(json.dumps(line) + "\n")
        logger.info("step %d validation (%s weights, %d clips, %d skipped, %.1f s): %s", step, weights,
                    line["num_clips"], line["skipped"], line["seconds"],
                    " ".join(f"{m}={line[m]:.5g}" for m in self.metrics if line.get(m) is not None))
        if logger_ is not None:
            scalars = {f"{prefix}/{m}": line[m] for m in self.metrics if line.get(m) is not None}
            scalars.update({f"{prefix}/seconds": line["seconds"], f"{prefix}/skipped": line["skipped"]})
            logger_.log_scalars(step, scalars)
            previews = [s for s in scores if s.preview is not None][:PREVIEW_CLIPS]
            for k, score in enumerate(previews):
                logger_.log_image(f"{prefix}/preview_{k}", score.preview, step)
        value = line.get(self.best_metric)
        if value is not None and self._better(value):
            # Null when no checkpoint holds these weights (val_every is not a multiple of ckpt_every).
            ckpt = self.outputs / step_dir_name(step) if self._checkpoint_follows or (
                self.outputs / step_dir_name(step)).is_dir() else None
            self.best = {"metric": self.best_metric, "value": value, "step": step, "weights": weights,
                         "checkpoint": str(ckpt) if ckpt else None,
                         "weights_dir": str(ckpt / ("model" if weights == "raw" else weights)) if ckpt else None}
            self._write_best()

    def _better(self, value: float) -> bool:
        if self.best is None or self.best.get("metric") != self.best_metric:
            return True
        if self.best_metric in LOWER_IS_BETTER:
            return value < self.best["value"]
        return value > self.best["value"]

    def _write_best(self) -> None:
        if self.best is None:
            return
        path = self.outputs / BEST_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.best, indent=1) + "\n")
        os.replace(tmp, path)

    def _truncate_history(self, step: int) -> None:
        """On resume: lines of steps after the checkpoint (an interrupted run's) are dropped, so
        the history never holds a step twice (as TensorBoard's purge_step does for the scalars)."""
        path = self.outputs / HISTORY_NAME
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
        if len(kept) != len(lines):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, path)


def merge_scores(scores: list[ClipScore], metrics: list[str]) -> dict[str, float | None]:
    """Each metric's mean over all (clip, frame) values (flolpips: frame pairs), an exact sum
    (`math.fsum`) as the eval takes it, so the result does not depend on how clips were split
    over ranks; fvd from the I3D features of all clips in row order."""
    out: dict[str, float | None] = {}
    for metric in metrics:
        if metric == "fvd":
            continue
        values = [v for s in scores for v in s.values.get(metric, ())]
        out[metric] = math.fsum(values) / len(values) if values else None
    if "fvd" in metrics:
        from ..metrics.fvd import fvd

        if len(scores) >= 2:
            real = torch.cat([s.features[0] for s in scores])
            fake = torch.cat([s.features[1] for s in scores])
            out.update(fvd(real, fake))
        else:
            out["fvd"] = None
    return out
