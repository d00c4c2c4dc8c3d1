"""Merge per-pair results (`evaluate.ClipResult`) into the eval's numbers: means by the protocol,
bootstrap 95% intervals, FVD, where the reconstruction fails (per frame index, per position in
the temporal VAE's chunk, the worst videos), and the per-video records.

Every number is a function of the results in pair order (``ClipResult.index``): the merge of any
number of ranks (`gather_results`) gives the same JSON as one process, means bit for bit (exact
``math.fsum`` sums), FVD up to the network's rounding of other batch shapes.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .settings import EvalSettings

if TYPE_CHECKING:
    from .evaluate import ClipResult

# Higher is better for these; for the others (LPIPS, FloLPIPS) lower is better.
HIGHER_IS_BETTER = ("ssim", "psnr")
# Metrics with one value per evaluated frame (FloLPIPS has one per consecutive frame pair).
PER_FRAME = ("ssim", "psnr", "lpips")


def gather_results(local: Sequence["ClipResult"]) -> list["ClipResult"]:
    """Every rank's results, on every rank, in pair order (a collective under torchrun; the
    identity, sorted, without a process group)."""
    from ..distributed import all_gather_objects

    merged = [r for part in all_gather_objects(list(local)) for r in part]
    indices = [r.index for r in merged]
    if len(set(indices)) != len(indices):
        raise ValueError("two results of the same pair index: ranks scored overlapping pairs")
    return sorted(merged, key=lambda r: r.index)


def _fsum_mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def metric_mean(results: Sequence["ClipResult"], metric: str, settings: EvalSettings) -> float | None:
    """The protocol's reported value of ``metric`` over ``results`` (in pair order)."""
    if settings.card.aggregation == "minibatch_frame":
        return _minibatch_frame_mean(results, metric, settings.batch_size)
    return _fsum_mean([v for r in results for v in r.values.get(metric, ())])


def _minibatch_frame_mean(results: Sequence["ClipResult"], metric: str, batch_size: int) -> float | None:
    """Open-Sora-Plan's: per mini-batch and frame index the mean over the batch's videos, then the
    mean of those (a partial last batch weighs as much as a full one)."""
    cells = []
    for start in range(0, len(results), batch_size):
        series = [r.values[metric] for r in results[start:start + batch_size] if r.values.get(metric)]
        for k in range(max((len(s) for s in series), default=0)):
            cells.append(_fsum_mean([s[k] for s in series if len(s) > k]))
    return _fsum_mean(cells)


def _interval(stats: np.ndarray) -> list[float] | None:
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None
    low, high = np.percentile(stats, [2.5, 97.5])
    return [float(low), float(high)]


def bootstrap_ci(results: Sequence["ClipResult"], metric: str, settings: EvalSettings) -> list[float] | None:
    """Percentile bootstrap 95% interval of the metric's reported value: ``settings.bootstrap``
    resamples of the videos with replacement (the same resamples for every metric, seeded by
    ``settings.seed``). None without resamples or with fewer than 2 videos."""
    if metric == "fvd":
        raise ValueError("FVD is a set statistic: fvd_bootstrap_ci")
    n = len(results)
    if settings.bootstrap == 0 or n < 2:
        return None
    idx = np.random.default_rng(settings.seed).integers(0, n, size=(settings.bootstrap, n))
    if settings.card.aggregation == "minibatch_frame":
        return _interval(np.array([_nan(metric_mean([results[i] for i in row], metric, settings)) for row in idx]))
    sums = np.array([math.fsum(r.values.get(metric, ())) for r in results])
    counts = np.array([len(r.values.get(metric, ())) for r in results], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _interval(sums[idx].sum(axis=1) / counts[idx].sum(axis=1))


def _fvd_by_minibatch(settings: EvalSettings) -> bool:
    return settings.card.fvd_averaging == "minibatch_cliplengths"


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def fvd_value(included: Sequence["ClipResult"], settings: EvalSettings) -> float:
    """FVD of the pairs that entered it, by the protocol's averaging."""
    from .fvd import frechet_distance

    if not _fvd_by_minibatch(settings):
        return frechet_distance(np.stack([r.features["real"] for r in included]),
                                np.stack([r.features["generated"] for r in included]))
    return float(np.mean(_minibatch_fvds(included, settings.batch_size)))


def _minibatch_fvds(included: Sequence["ClipResult"], batch_size: int) -> list[float]:
    """Open-Sora-Plan's per mini-batch FVD: the mean over clip lengths of the batch's FVD (one
    video: the squared mean difference only, as upstream)."""
    from .fvd import frechet_distance

    out = []
    for start in range(0, len(included), batch_size):
        batch = included[start:start + batch_size]
        lengths = min(r.features["real"].shape[0] for r in batch)
        per_length = []
        for j in range(lengths):
            real = np.stack([r.features["real"][j] for r in batch]).astype(np.float64)
            gen = np.stack([r.features["generated"][j] for r in batch]).astype(np.float64)
            per_length.append(frechet_distance(real, gen) if len(batch) > 1
                              else float(np.sum((real.mean(0) - gen.mean(0)) ** 2)))
        out.append(float(np.mean(per_length)))
    return out


def fvd_bootstrap_ci(included: Sequence["ClipResult"], settings: EvalSettings) -> list[float] | None:
    """95% interval of FVD: the set statistic recomputed on resamples of the videos (pairs kept
    together); Open-Sora-Plan's mean of mini-batch values on resamples of its mini-batches."""
    from .fvd import frechet_distance

    if settings.bootstrap == 0 or len(included) < 2:
        return None
    rng = np.random.default_rng([settings.seed, 1])
    if _fvd_by_minibatch(settings):
        values = np.array(_minibatch_fvds(included, settings.batch_size))
        idx = rng.integers(0, len(values), size=(settings.bootstrap, len(values)))
        return _interval(values[idx].mean(axis=1))
    real = np.stack([r.features["real"] for r in included]).astype(np.float64)
    gen = np.stack([r.features["generated"] for r in included]).astype(np.float64)
    idx = rng.integers(0, len(included), size=(settings.bootstrap, len(included)))
    stats = []
    for row in idx:
        if len(set(row.tolist())) < 2:  # one distinct video: no covariance
            continue
        stats.append(frechet_distance(real[row], gen[row]))
    return _interval(np.array(stats))


def _by_position(results: Sequence["ClipResult"], metric: str, key: Callable[["ClipResult", int], int],
                 size: int | None = None) -> list[float | None]:
    cells: dict[int, list[float]] = {}
    for r in results:
        for k, v in enumerate(r.values.get(metric, ())):
            cells.setdefault(key(r, k), []).append(v)
    size = size if size is not None else (max(cells) + 1 if cells else 0)
    return [_fsum_mean(cells.get(p, [])) for p in range(size)]


def where_it_fails(results: Sequence["ClipResult"], settings: EvalSettings) -> dict:
    """Per evaluated-frame index and per position inside the temporal VAE's chunk
    (``settings.chunk_frames``: the file's frame index modulo it; chunk seams are where causal
    video VAEs fail), the mean over videos; and the ``worst_k`` videos per metric."""
    metrics = [m for m in settings.metrics if m != "fvd"]
    per_frame = {m: _by_position(results, m, lambda r, k: k) for m in metrics}
    per_chunk = {m: _by_position(results, m, lambda r, k: r.frame_indices[k] % settings.chunk_frames,
                                 settings.chunk_frames) for m in metrics if m in PER_FRAME}
    worst = {}
    for m in metrics:
        scored = [(r.means[m], r.name) for r in results if r.means.get(m) is not None]
        scored.sort(key=lambda vn: (vn[0] if m in HIGHER_IS_BETTER else -vn[0], vn[1]))
        worst[m] = [{"name": name, "value": value} for value, name in scored[:settings.worst_k]]
    return {"per_frame_index": per_frame, "per_chunk_position": per_chunk, "worst_videos": worst}


def video_record(r: "ClipResult") -> dict:
    """One entry of the JSON's ``per_video`` (see docs/pipeline.md, eval results)."""
    return {"index": r.index, "real": r.real, "generated": r.generated, "num_frames": r.num_frames, **r.means,
            "fps": r.fps, "fps_mismatch": r.fps_mismatch, "fvd_excluded": r.fvd_excluded,
            "frame_indices": r.frame_indices, "frames": r.values}


def summarize_results(results: Sequence["ClipResult"], settings: EvalSettings, skipped: Sequence[dict] = ()) -> dict:
    """The eval's result (everything of the JSON but the two folders) from every pair's result
    in pair order. ``skipped``: ``{"name", "reason"}`` of unreadable pairs. A pair left out of FVD
    carries its reason (`ClipResult.fvd_excluded`)."""
    from .protocol import EvalError

    results = sorted(results, key=lambda r: r.index)
    if not results:
        raise EvalError(f"no pair could be evaluated ({len(skipped)} skipped)")
    notes = [note for r in results for note in r.notes]
    fps_mismatch = [r for r in results if r.fps_mismatch]
    if fps_mismatch:
        fps = fps_mismatch[0].fps
        notes.append(f"{len(fps_mismatch)} pair(s) at different frame rates, e.g. {fps_mismatch[0].name}: real "
                     f"{fps['real']:g} fps, generated {fps['generated']:g} fps; frames are compared by index, so a "
                     f"temporally subsampled video is scored against other moments "
                     f"({', '.join(r.name for r in fps_mismatch[:10])})")
    no_flow = [r.name for r in results if "flolpips" in r.means and r.means["flolpips"] is None]
    if no_flow:
        notes.append(f"flolpips skipped for {len(no_flow)} single-frame item(s) (needs >= 2 frames): "
                     f"{', '.join(no_flow[:10])}")
    out: dict = {}
    for metric in settings.metrics:
        if metric != "fvd":
            out[metric] = metric_mean(results, metric, settings)
            out[f"{metric}_ci95"] = bootstrap_ci(results, metric, settings)
    if "fvd" in settings.metrics:
        out.update(_fvd_summary(results, settings, notes))
    out.update(
        per_video={r.name: video_record(r) for r in results},
        num_videos=len(results),
        num_frames_evaluated=sum(r.num_frames for r in results),
        num_fps_mismatch=len(fps_mismatch),
        skipped=list(skipped),
        num_skipped=len(skipped),
        warnings=notes,
        protocol=settings.describe(),
        **where_it_fails(results, settings),
    )
    return out


def _fvd_summary(results: Sequence["ClipResult"], settings: EvalSettings, notes: list[str]) -> dict:
    from .fvd import FewVideosWarning, fvd_warnings

    included = [r for r in results if r.features is not None]
    excluded = [{"name": r.name, "reason": r.fvd_excluded} for r in results if r.features is None]
    if len(included) < 2:
        from .fvd import FVDError

        raise FVDError(f"fvd needs at least 2 pairs with features, got {len(included)}")
    if excluded:
        notes.append(f"fvd leaves out {len(excluded)} pair(s) that the other metrics score: "
                     + ", ".join(f"{e['name']} ({e['reason']})" for e in excluded[:10]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FewVideosWarning)
        singular = fvd_warnings(len(included), included[0].features["real"].shape[-1])
    notes.extend(str(w.message) for w in caught)
    return {"fvd": fvd_value(included, settings), "fvd_num_videos": len(included),
            "fvd_ci95": fvd_bootstrap_ci(included, settings), "fvd_excluded": excluded,
            "fvd_num_excluded": len(excluded), "fvd_singular_covariance": singular}
