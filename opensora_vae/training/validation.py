"""Held-out validation in the training loop: the eval's numbers on the same clips, every
`val_every` steps and after the last step.

What a validation of the weights of step k computes is, by construction, what a user gets from
running inference with checkpoint k on the same clips and then the eval CLI on the two folders
(`tests/training/test_validation.py` checks it to 1e-6):

- the first `val_max_clips` rows of `val_data_path`, each read as inference reads it (the one
  `data.clips.ClipReader` with the eval protocol's window: frames 0, s, 2s, ... from the start,
  `dataset.num_frames` at `dataset.frame_interval`, the `dataset` transform to
  `dataset.image_size`), the same clips and frames every time; a row that cannot be read is
  skipped with its reason;
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
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ..data.clips import ClipReader, ProtocolWindow
from ..data.table import load_table
from ..data.transforms import VideoTransform
from ..distributed import DistEnv, all_gather_objects
from ..errors import UserError
from ..files import atomic_write_text
from ..metrics.fvd import FVD_NUM_FRAMES, MIN_RELIABLE_VIDEOS
from ..metrics.protocol import frame_indices
from ..metrics.settings import EvalSettings
from ..metrics.summary import HIGHER_IS_BETTER
from ..models.checkpoint_io import EMA_SUBDIR, MODEL_SUBDIR, step_dir_name
from ..precision import autocast
from .ema import full_tensor

logger = logging.getLogger("opensora_vae.training")

HISTORY_NAME = "val_history.jsonl"
BEST_NAME = "val_best.json"
PREVIEW_CLIPS = 2  # the first readable clips of the table, shown as input | reconstruction (frame 0)


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


def val_eval_settings(cfg: Any, device: torch.device) -> EvalSettings:
    """The eval settings of validation: `val_metrics` of the training clip window
    (`dataset.num_frames` frames at `dataset.frame_interval` from frame 0, at `dataset.image_size`:
    the eval's resize and crop leave such frames as they are), on the training device. Validated
    by `EvalSettings` (e.g. the crop a multiple of 8) before training starts. The eval CLI scores
    inference's files of these clips with the same flags, `--sample_rate 1` (the files hold the
    selected frames)."""
    size = cfg.dataset.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return EvalSettings.from_config(cfg, metrics=tuple(cfg.val_metrics), resolution=min(height, width),
                                    crop_size=height if height == width else None, device=device,
                                    batch_size=1, skip_bad=True, bootstrap=0)


class Validator:
    """`Validator(cfg, env)` checks the table and settings (before any output exists); then the
    trainer calls `run(step, model_state, ema_state, pipeline_config)` on every rank at the same
    steps, with the live (possibly sharded) state dicts of the model and the EMA."""

    def __init__(self, cfg: Any, env: DistEnv, checkpoints: Any = None):
        from ..metrics.evaluate import MetricSuite

        self.cfg, self.env = cfg, env
        self.checkpoints = checkpoints  # the CheckpointManager: pruning keeps the best step's dir
        self.outputs = Path(cfg.outputs).expanduser()
        self.settings = val_eval_settings(cfg, env.device)
        table = load_table(cfg.val_data_path)  # TableError (a UserError) when missing or empty
        num = len(table) if cfg.val_max_clips is None else min(len(table), cfg.val_max_clips)
        if "fvd" in cfg.val_metrics and num < MIN_RELIABLE_VIDEOS:
            raise ValidationError(f"val_metrics has fvd but {cfg.val_data_path} has {num} clips to validate "
                                  f"(< {MIN_RELIABLE_VIDEOS}): fvd of so few clips is noise; add clips or "
                                  "leave fvd out of val_metrics")
        self.paths = [table[i] for i in range(num)]
        data = cfg.dataset
        size = data.image_size if isinstance(data.image_size, int) else tuple(data.image_size)
        # Inference's reader: the eval protocol's frames at the training size, so a validated clip is
        # the clip `scripts/inference_vae.py` reconstructs and writes.
        self.reader = ClipReader(VideoTransform(data.transform_name, size),
                                 ProtocolWindow(data.num_frames, data.frame_interval), data.read_timeout_s)
        self.rows = list(range(num))[env.rank::env.world_size]  # round-robin: balanced, no overlap
        self.metrics = list(self.settings.metrics)
        self.best_metric = cfg.val_best_metric
        # The networks once, before training: a missing LPIPS/I3D weights file fails now, not at step k.
        self.suite = MetricSuite(self.settings)
        self.best: dict[str, Any] | None = None
        self.last_step = -1
        self._checkpoint_follows = False

    # ------------------------------------------------------------------ state (in the checkpoint)
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.last_step = int(state["last_step"])
        self._pin_best()
        if self.env.is_main:
            self._truncate_history(self.last_step)
            self._write_best()

    # ------------------------------------------------------------------ the run
    def due(self, step: int, final: bool = False) -> bool:
        """Every `val_every` steps, and once at the final step."""
        return step != self.last_step and (final or step % self.cfg.val_every == 0)

    def run(self, step: int, model_state: Mapping[str, torch.Tensor], ema_state: Mapping[str, torch.Tensor] | None,
            pipeline_config: dict, log: Any = None, final: bool = False) -> list[dict[str, Any]]:
        """Validates the raw (and EMA) weights of `step` on every rank; returns the history lines
        (rank 0 also writes them, the scalars and the best record). The trainer calls it before
        it saves the checkpoint of `step` (every `ckpt_every` steps and at the `final` step), so
        that checkpoint holds this record, and the record names it."""
        self._checkpoint_follows = final or bool(self.cfg.ckpt_every and step % self.cfg.ckpt_every == 0)
        weights = {"raw": model_state}
        if ema_state is not None:
            weights[EMA_SUBDIR] = {**model_state, **ema_state}  # frozen weights come from the model
        lines = []
        for name, state in weights.items():
            pipe = self._load(pipeline_config, state)
            lines.append(self._validate(pipe, step, name, log))
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

    @torch.no_grad()
    def _score(self, pipe, row: int, clip: Any) -> tuple[Any, torch.Tensor]:
        """The eval's result of row `row`'s clip (`ClipResult`) and its input | reconstruction preview."""
        from ..inference.outputs import to_uint8_frames
        from ..metrics.evaluate import score_pair
        from .logging import preview_image

        device = self.env.device
        x = clip.video.unsqueeze(0).to(device)
        total = 1 if clip.is_image else x.shape[2]
        indices = frame_indices(self.settings.num_frames, self.settings.sample_rate)[:total]
        with autocast(device, self.cfg.dtype):
            rec = pipe.reconstruct(x, sample=False, rec=True).rec
        # The uint8 frames inference writes, scored as the eval scores those files.
        result = score_pair(to_uint8_frames(x[0]), to_uint8_frames(rec[0]), self.settings, self.suite,
                            name=Path(self.paths[row]).name, index=row, frame_indices=indices)
        return result, preview_image(x[0, :, 0], rec[0, :, 0])

    def _validate(self, pipe, step: int, weights: str, log: Any) -> dict[str, Any]:
        from ..metrics.summary import gather_results

        start = time.perf_counter()
        results, skipped, previews = [], [], []
        for row in self.rows:
            clip, reason = self.reader.try_read(self.paths[row])  # a ReadTimeoutError is not a skip: it stops the run
            if clip is None:
                skipped.append({"index": row, "path": self.paths[row], "reason": reason})
                continue
            result, preview = self._score(pipe, row, clip)
            results.append(result)
            if len(previews) < PREVIEW_CLIPS:  # each rank's first: among them are the table's first clips
                previews.append((row, preview))
        results = gather_results(results)
        gathered = all_gather_objects({"skipped": skipped, "previews": previews})
        skipped = sorted((s for g in gathered for s in g["skipped"]), key=lambda s: s["index"])
        previews = [image for _, image in sorted(p for g in gathered for p in g["previews"])][:PREVIEW_CLIPS]
        seconds = max(all_gather_objects(time.perf_counter() - start))
        line: dict[str, Any] = {"step": step, "weights": weights}
        line.update(merge_results(results, self.settings))
        line.update(num_clips=len(results), num_frames=sum(r.num_frames for r in results),
                    skipped=len(skipped), skipped_clips=skipped, seconds=seconds)
        improved = self._update_best(line)  # on every rank: the state is the same everywhere
        if self.env.is_main:
            self._report(line, previews, log, improved)
        return line

    def _update_best(self, line: dict[str, Any]) -> bool:
        value, step = line.get(self.best_metric), line["step"]
        if value is None or not self._better(value):
            return False
        # Null when no checkpoint holds these weights (val_every is not a multiple of ckpt_every).
        ckpt = self.outputs / step_dir_name(step)
        if not (self._checkpoint_follows or ckpt.is_dir()):
            ckpt = None
        weights = line["weights"]
        self.best = {"metric": self.best_metric, "value": value, "step": step, "weights": weights,
                     "checkpoint": str(ckpt) if ckpt else None,
                     "weights_dir": str(ckpt / (MODEL_SUBDIR if weights == "raw" else weights)) if ckpt else None}
        self._pin_best()
        return True

    def _pin_best(self) -> None:
        """`keep_last_ckpts` pruning never removes the step dir the record names."""
        if self.checkpoints is not None:
            best = self.best.get("checkpoint") if self.best else None
            self.checkpoints.pinned = {Path(best).resolve()} if best else set()

    # ------------------------------------------------------------------ outputs (rank 0)
    def _report(self, line: dict[str, Any], previews: list[torch.Tensor], log: Any, improved: bool) -> None:
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
        if log is not None:
            scalars = {f"{prefix}/{m}": line[m] for m in self.metrics if line.get(m) is not None}
            scalars.update({f"{prefix}/seconds": line["seconds"], f"{prefix}/skipped": line["skipped"]})
            log.log_scalars(step, scalars)
            for k, image in enumerate(previews):
                log.log_image(f"{prefix}/preview_{k}", image, step)
        if improved:
            self._write_best()

    def _better(self, value: float) -> bool:
        if self.best is None or self.best.get("metric") != self.best_metric:
            return True
        if self.best_metric in HIGHER_IS_BETTER:
            return value > self.best["value"]
        return value < self.best["value"]  # lpips, flolpips, fvd

    def _write_best(self) -> None:
        if self.best is None:
            return
        path = self.outputs / BEST_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.best, indent=1) + "\n")

    def _truncate_history(self, step: int) -> None:
        """On resume: lines of steps after the checkpoint (an interrupted run's) are dropped, so
        the history never holds a step twice (as TensorBoard's purge_step does for the scalars)."""
        path = self.outputs / HISTORY_NAME
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def merge_results(results: list[Any], settings: EvalSettings) -> dict[str, float | int | None]:
    """The eval's value of each metric from every clip's result in row order (`metrics.summary`:
    exact sums, so 1 or N ranks give the same numbers); None for a metric without values."""
    from ..metrics.summary import fvd_value, metric_mean

    out: dict[str, float | int | None] = {}
    for metric in settings.metrics:
        if metric != "fvd":
            out[metric] = metric_mean(results, metric, settings)
    if "fvd" in settings.metrics:
        included = [r for r in results if r.features is not None]
        out["fvd"] = fvd_value(included, settings) if len(included) >= 2 else None
        out["fvd_num_videos"] = len(included)
    return out
