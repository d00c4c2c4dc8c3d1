"""Rank-0 progress reporting: log lines with running means and ETA, TensorBoard, a tqdm bar on
terminals, optional wandb."""

from __future__ import annotations

import collections
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import UserError

logger = logging.getLogger("opensora_vae.training")

MAX_SKIP_EXAMPLES = 5  # unreadable files named per rank, and in all, by the abort message
# Distinct unreadable paths remembered for "warn once" (a 30M-row table with 1 % bad rows would
# otherwise keep 300k of them): a path seen again after this many others is warned about again.
SKIP_MEMORY = 10_000


def format_duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `12s`; `?` when unknown."""
    if seconds is None or seconds != seconds:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def check_wandb_available() -> None:
    if importlib.util.find_spec("wandb") is None:
        raise UserError("wandb=True but the 'wandb' package is not installed: "
                           "`pip install wandb`, or set wandb=False (TensorBoard logs are always written)")


def preview_image(x_frame: torch.Tensor, rec_frame: torch.Tensor) -> torch.Tensor:
    """`input | reconstruction` side by side, (3, H, 2W) in [0, 1], from frames in [-1, 1]."""
    both = torch.cat([x_frame.float(), rec_frame.float()], dim=-1)
    return ((both.clamp(-1, 1) + 1) / 2).cpu()


class SkipLog:
    """This rank's unreadable samples: a warning for each path (once among the last SKIP_MEMORY
    distinct ones) and the first MAX_SKIP_EXAMPLES kept for the abort message. The counts are
    the trainer's counters; the memory held here is bounded however long the run."""

    def __init__(self, rank: int):
        self.rank = rank
        self.warned: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.examples: list[tuple[str, str]] = []

    def note(self, skipped: list[tuple[str, str]]) -> None:
        for path, reason in skipped:
            if path in self.warned:
                self.warned.move_to_end(path)
                continue
            self.warned[path] = None
            if len(self.warned) > SKIP_MEMORY:
                self.warned.popitem(last=False)
            if len(self.examples) < MAX_SKIP_EXAMPLES:
                self.examples.append((path, reason))
            logger.warning("unreadable sample skipped (rank %d): %s: %s", self.rank, path, reason)


class RunningMeans:
    """The last `window` values of each loss term, for the log's running means. A checkpoint
    entry: a resumed run's means continue where the saved run's were (bounded: `window` each)."""

    def __init__(self, window: int):
        self.window = window
        self.recent: dict[str, collections.deque] = {}

    def add(self, name: str, value: float) -> None:
        self.recent.setdefault(name, collections.deque(maxlen=self.window)).append(value)

    def mean(self, name: str) -> float | None:
        values = self.recent.get(name)
        return sum(values) / len(values) if values else None

    def count(self, name: str) -> int:
        return len(self.recent.get(name, ()))

    def state_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.recent.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.recent = {name: collections.deque(values, maxlen=self.window) for name, values in state.items()}


class TrainLogger:
    """Rank-0 progress: TensorBoard scalars, a tqdm bar on terminals only, and plain log lines.

    Each log line has the step, the step's loss terms and their running mean over the last
    `RUNNING_WINDOW` logged steps (single steps are noisy; `means`, which a resume restores),
    speed, and an ETA, so the file log alone shows progress. Does nothing on ranks other than 0
    (`enabled=False`).
    """

    RUNNING_WINDOW = 50

    def __init__(self, outputs: str | Path, enabled: bool, total_steps: int | None, initial_step: int,
                 log_every: int, use_wandb: bool = False, run_config: Mapping[str, Any] | None = None,
                 means: RunningMeans | None = None):
        self.enabled = enabled
        self.log_every = max(1, int(log_every))
        self.total_steps = total_steps
        self.initial_step = initial_step
        self.started = time.perf_counter()
        self.means = means if means is not None else RunningMeans(self.RUNNING_WINDOW)
        self.writer = None
        self.bar = None
        self.wandb_run = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        # A resumed run rewrites the steps after its checkpoint: purge_step drops what an
        # interrupted run had logged for them, so TensorBoard never shows a step twice.
        self.writer = SummaryWriter(str(Path(outputs) / "tensorboard"),
                                    purge_step=initial_step + 1 if initial_step else None)
        # disable=None: no bar when stderr is not a terminal (CI, nohup, a log file).
        self.bar = tqdm(total=total_steps, initial=initial_step, disable=None, dynamic_ncols=True,
                        desc="train")
        if use_wandb:
            check_wandb_available()
            import wandb

            self.wandb_run = wandb.init(config=dict(run_config or {}), dir=str(outputs))

    def running_mean(self, name: str) -> float | None:
        return self.means.mean(name)

    def eta_seconds(self, step: int) -> float | None:
        done = step - self.initial_step
        if not self.total_steps or done <= 0:
            return None
        return (time.perf_counter() - self.started) / done * max(self.total_steps - step, 0)

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
            if name.startswith("loss/"):
                self.means.add(name, value)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=step)
        self.bar.update(1)
        loss = metrics.get("loss/loss")
        self.bar.set_postfix(loss=f"{loss:.4g}" if loss is not None else "skipped",
                             steps_per_s=f"{metrics.get('speed/steps_per_s', 0.0):.2f}")
        if step % self.log_every == 0 or step == self.total_steps:
            total = f"/{self.total_steps}" if self.total_steps else ""
            terms = " ".join(f"{k.split('/', 1)[1]}={v:.5g}" for k, v in metrics.items()
                             if k.startswith("loss/"))
            mean = self.running_mean("loss/loss")
            eta = self.eta_seconds(step)
            logger.info("step %d%s | %s | mean(last %d) loss=%s | grad_norm=%.4g lr=%.3g | %.2f samples/s | "
                        "eta %s | skipped samples %d",
                        step, total, terms or "non-finite loss, step skipped",
                        self.means.count("loss/loss"), "n/a" if mean is None else f"{mean:.5g}",
                        metrics.get("train/grad_norm", float("nan")), metrics.get("train/lr", 0.0),
                        metrics.get("speed/samples_per_s", 0.0), format_duration(eta),
                        int(metrics.get("data/skipped_total", 0)))

    def log_preview(self, step: int, image: torch.Tensor) -> None:
        self.log_image("preview/input|reconstruction", image, step, wandb_key="preview")

    def log_image(self, tag: str, image: torch.Tensor, step: int, wandb_key: str | None = None) -> None:
        """A (3, H, W) image in [0, 1] under `tag` (TensorBoard; wandb under `wandb_key` or `tag`)."""
        if not self.enabled:
            return
        self.writer.add_image(tag, image, step)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({wandb_key or tag: wandb.Image(image.permute(1, 2, 0).numpy())}, step=step)

    def log_scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        """Scalars of a phase other than the training step (validation): TensorBoard and wandb."""
        if not self.enabled:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self.writer = self.bar = self.wandb_run = None
