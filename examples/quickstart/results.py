"""Reading what the demo's stages wrote (loss curves, metric files) and printing the summary."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


@dataclass
class LossTrend:
    """Mean loss over the first and the last ``window`` steps of a run."""

    name: str
    steps: int  # steps of the run (the last step logged)
    window: int
    first: float
    last: float
    terms: dict[str, tuple[float, float]] = field(default_factory=dict)  # term -> (first, last)

    @property
    def change(self) -> float:
        """Relative change, negative when the loss fell."""
        return (self.last - self.first) / abs(self.first) if self.first else math.nan

    @property
    def fell(self) -> bool:
        return self.last < self.first


def _window_means(points: Sequence[tuple[int, float]], lo: int, hi: int, window: int) -> tuple[float, float]:
    """Means of the finite values logged in steps [lo, lo + window) and (hi - window, hi]."""
    finite = [(s, float(v)) for s, v in points if math.isfinite(float(v))]
    head = [v for s, v in finite if lo <= s < lo + window]
    tail = [v for s, v in finite if hi - window < s <= hi]
    if not head or not tail:
        raise ValueError(f"no finite loss values in the first or the last {window} steps")
    return sum(head) / len(head), sum(tail) / len(tail)


def loss_trend(name: str, points: Sequence[tuple[int, float]], window: int | None = None,
               terms: dict[str, Sequence[tuple[int, float]]] | None = None) -> LossTrend:
    """First-vs-last window means of (step, loss) points, steps ascending.

    The window defaults to a fifth of the run. A window of whole epochs compares the same
    samples at the start and at the end, so per-sample difficulty does not masquerade as
    progress. ``terms`` (e.g. the loss components, possibly logged on some steps only) are
    averaged over the same step windows.
    """
    if not points:
        raise ValueError(f"{name}: no loss values")
    lo, hi = int(points[0][0]), int(points[-1][0])
    steps = hi - lo + 1
    window = min(window or max(1, steps // 5), steps)
    try:
        first, last = _window_means(points, lo, hi, window)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    trend = LossTrend(name, steps, window, first, last)
    for term, values in (terms or {}).items():
        try:
            trend.terms[term] = _window_means(values, lo, hi, window)
        except ValueError:
            continue  # a term absent from one window (e.g. no image step there) is left out
    return trend


def read_tensorboard_scalars(logdir: str | Path, prefix: str = "loss/") -> dict[str, list[tuple[int, float]]]:
    """Every scalar whose tag starts with ``prefix``: tag -> (step, value) sorted by step, over
    all event files under ``logdir`` (a later write of the same step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(logdir)
    files = sorted(logdir.rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {logdir}")
    by_tag: dict[str, dict[int, float]] = {}
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0 = keep every point
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(prefix):
                by_tag.setdefault(tag, {}).update({int(e.step): float(e.value) for e in acc.Scalars(tag)})
    if not by_tag:
        raise ValueError(f"no '{prefix}*' scalars in the TensorBoard logs under {logdir}")
    return {tag: sorted(values.items()) for tag, values in sorted(by_tag.items())}


def read_metrics_json(path: str | Path) -> dict[str, float]:
    """The mean metrics of an eval result file (`metric_{N}f_{R}res.json`)."""
    data = json.loads(Path(path).read_text())
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class ResultRow:
    label: str
    metrics: dict[str, float]


def format_results_table(rows: Sequence[ResultRow], metrics: Sequence[str]) -> str:
    """Plain-text table: one row per evaluated reconstruction, '-' where a metric is absent."""
    width = max(len(r.label) for r in rows) + 2
    head = "".join(f"{m.upper():>10}" for m in metrics)
    lines = [f"{'reconstruction':<{width}}{head}"]
    for row in rows:
        cells = "".join(f"{row.metrics[m]:>10.4f}" if m in row.metrics else f"{'-':>10}" for m in metrics)
        lines.append(f"{row.label:<{width}}{cells}")
    return "\n".join(lines)


def format_loss_trends(trends: Sequence[LossTrend]) -> str:
    lines = []
    for t in trends:
        verdict = "fell" if t.fell else "DID NOT FALL"
        line = (f"{t.name:<34} {t.steps:>4} steps, first/last {t.window:>3}: {t.first:9.4g} -> {t.last:9.4g}"
                f" ({t.change:+.0%}, {verdict})")
        if t.terms:
            line += "; " + ", ".join(f"{k} {a:.4g} -> {b:.4g}" for k, (a, b) in t.terms.items())
        lines.append(line)
    return "\n".join(lines)
