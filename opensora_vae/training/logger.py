"""Rank-0 progress reporting: python logging lines, tqdm bar, TensorBoard, optional wandb."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

logger = logging.getLogger("opensora_vae.training")


def check_wandb_available() -> None:
    if importlib.util.find_spec("wandb") is None:
        raise RuntimeError("wandb=True but the 'wandb' package is not installed: "
                           "`pip install wandb`, or set wandb=False (TensorBoard logs are always written)")


def preview_image(x_frame: torch.Tensor, rec_frame: torch.Tensor) -> torch.Tensor:
    """`input | reconstruction` side by side, (3, H, 2W) in [0, 1], from frames in [-1, 1]."""
    both = torch.cat([x_frame.float(), rec_frame.float()], dim=-1)
    return ((both.clamp(-1, 1) + 1) / 2).cpu()


class TrainLogger:
    """Does nothing on ranks other than 0 (`enabled=False`)."""

    def __init__(self, outputs: str | Path, enabled: bool, total_steps: int | None, initial_step: int,
                 log_every: int, use_wandb: bool = False, run_config: Mapping[str, Any] | None = None):
        self.enabled = enabled
        self.log_every = max(1, int(log_every))
        self.total_steps = total_steps
        self.writer = None
        self.bar = None
        self.wandb_run = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.writer = SummaryWriter(str(Path(outputs) / "tensorboard"))
        # disable=None: no bar when stderr is not a terminal (CI, nohup); the log lines remain.
        self.bar = tqdm(total=total_steps, initial=initial_step, disable=None, dynamic_ncols=True,
                        desc="train")
        if use_wandb:
            check_wandb_available()
            import wandb

            self.wandb_run = wandb.init(config=dict(run_config or {}), dir=str(outputs))

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=step)
        self.bar.update(1)
        loss = metrics.get("loss/loss")
        self.bar.set_postfix(loss=f"{loss:.4g}" if loss is not None else "skipped",
                             steps_per_s=f"{metrics.get('speed/steps_per_s', 0.0):.2f}")
        if step % self.log_every == 0:
            total = f"/{self.total_steps}" if self.total_steps else ""
            terms = " ".join(f"{k.split('/', 1)[1]}={v:.5g}" for k, v in metrics.items()
                             if k.startswith("loss/"))
            logger.info("step %d%s | %s | grad_norm=%.4g lr=%.3g | %.2f samples/s | skipped samples %d",
                        step, total, terms or "non-finite loss, step skipped",
                        metrics.get("train/grad_norm", float("nan")), metrics.get("train/lr", 0.0),
                        metrics.get("speed/samples_per_s", 0.0), int(metrics.get("data/skipped_total", 0)))

    def log_preview(self, step: int, image: torch.Tensor) -> None:
        if not self.enabled:
            return
        self.writer.add_image("preview/input|reconstruction", image, step)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"preview": wandb.Image(image.permute(1, 2, 0).numpy())}, step=step)

    def info(self, msg: str, *args: Any) -> None:
        if self.enabled:
            logger.info(msg, *args)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self.writer = self.bar = self.wandb_run = None
