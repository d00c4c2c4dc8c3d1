"""Evaluate reconstructions against originals: two folders of videos/images paired by name,
scored by the frame protocol of `protocol.py` (frames, preprocessing, pairing). Each file is
decoded once for all metrics.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import warnings
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ..data.video_io import MediaReadError, VideoFile, is_image, read_image
from ..errors import OutputExistsError, check_folder_location
from .protocol import EvalError, MediaPair, frame_indices, pair_files, preprocess

if TYPE_CHECKING:  # the metric modules are imported when a metric is asked for (lpips costs seconds)
    from .flolpips import FloLPIPS
    from .lpips_metric import LPIPSMetric

logger = logging.getLogger(__name__)


# What `evaluate_dirs` can compute, in the order it reports them.
EVAL_METRICS = ("ssim", "psnr", "lpips", "flolpips", "fvd")
# The reference's metrics, the default: FVD needs the I3D weights, 16+ frames and many videos.
DEFAULT_EVAL_METRICS = ("ssim", "psnr", "lpips", "flolpips")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """cpu, cuda or cuda:N (None: cuda if available); anything else is an EvalError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise EvalError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N")
    device = parsed
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EvalError(f"device {device} requested but CUDA is not available (torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EvalError(f"device {device} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def check_settings(**settings: int | None) -> None:
    """Each setting is an integer >= 1 (or None where None means "not used" or "automatic":
    resolution, crop_size, subset_size, decode_workers). Checked before any file is read."""
    for name, value in settings.items():
        if value is None and name in ("resolution", "crop_size", "subset_size", "decode_workers"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EvalError(f"{name} must be an integer >= 1, got {value!r}")


class MetricSuite:
    """The requested metrics with their networks, built once. Each metric's module is imported
    only when that metric is requested: an SSIM/PSNR eval never loads lpips or torchvision."""

    def __init__(self, metrics: Sequence[str] = DEFAULT_EVAL_METRICS, device: str | torch.device | None = "cpu",
                 lpips_metric: LPIPSMetric | None = None, flolpips: FloLPIPS | None = None,
                 pwc_weights: str | os.PathLike | None = None, frames_per_batch: int | None = None):
        unknown = sorted(set(metrics) - set(EVAL_METRICS))
        if unknown or not metrics:
            raise EvalError(f"unknown or no metrics {unknown or list(metrics)}; choose from {list(EVAL_METRICS)}")
        self.metrics = [m for m in EVAL_METRICS if m in metrics]
        self.device = resolve_device(device)
        # Frames per network call. On CPU, batches beyond ~8 frames of 256x256 are slower per
        # frame (activations fall out of cache); on GPU larger batches keep the device busy.
        self.frames_per_batch = frames_per_batch or (8 if self.device.type == "cpu" else 32)
        self._frame_fns = {}
        if "ssim" in self.metrics:
            from .ssim import ssim

            self._frame_fns["ssim"] = ssim
        if "psnr" in self.metrics:
            from .psnr import psnr

            self._frame_fns["psnr"] = psnr
        self.lpips = None
        if "lpips" in self.metrics:
            if lpips_metric is None:
                from .lpips_metric import LPIPSMetric

                lpips_metric = LPIPSMetric("alex")
            self.lpips = lpips_metric.to(self.device)
        self.flolpips = None
        if "flolpips" in self.metrics:
            if flolpips is None:
                from .flolpips import FloLPIPS

                flolpips = FloLPIPS(pwc_weights=pwc_weights)
            self.flolpips = flolpips.to(self.device)
        self.i3d = None
        if "fvd" in self.metrics:
            from .fvd import load_i3d

            self.i3d = load_i3d().to(self.device)

    @property
    def network_metrics(self) -> bool:
        return self.lpips is not None or self.flolpips is not None or self.i3d is not None

    def video_features(self, videos: list[torch.Tensor]) -> torch.Tensor:
        """I3D features (N, 400) of (T, 3, h, w) videos in [0, 1], for FVD (a set statistic)."""
        from .fvd import i3d_features

        return i3d_features(self.i3d, videos, batch_size=max(1, self.frames_per_batch // 2))

    def frame_metrics(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """SSIM/PSNR of each frame of (N, 3, H, W) batches. A frame's value depends on that frame
        alone, bit for bit, whatever the batch: they are computed per pair, where it was decoded."""
        return {name: fn(real, fake) for name, fn in self._frame_fns.items()}

    def batch_metrics(self, real: torch.Tensor, fake: torch.Tensor, counts: list[int]) -> dict[str, list[torch.Tensor]]:
        """LPIPS (per frame) and FloLPIPS (per consecutive frame pair) of videos of ``counts``
        frames concatenated in (N, 3, H, W) batches, split per video. Network convolutions round
        differently by batch size on CPU, so the batches (``batch_size`` videos of one frame size,
        ``frames_per_batch`` frames per call) fix the values."""
        out = {}
        if self.lpips is not None:
            out["lpips"] = list(self.lpips(real, fake, batch_size=self.frames_per_batch).cpu().split(counts))
        if self.flolpips is not None:
            offsets = np.cumsum([0] + counts[:-1])
            starts = [int(o) + t for o, n in zip(offsets, counts) for t in range(n - 1)]
            pairs_per_call = max(1, self.frames_per_batch // 2)  # each pair runs PWC-Net on 4 frames
            values = self.flolpips.video(real, fake, starts, batch_size=pairs_per_call)
            out["flolpips"] = list(values.cpu().split([max(n - 1, 0) for n in counts]))
        return out


@dataclass
class _Accumulator:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, metric: str, vals: Iterable[float]) -> None:
        self.values.setdefault(metric, []).extend(float(v) for v in vals)

    def mean(self, metric: str) -> float | None:
        vals = self.values.get(metric)
        return math.fsum(vals) / len(vals) if vals else None


@dataclass
class _Decoded:
    """One pair, decoded and preprocessed (or the reason it was skipped)."""
    name: str
    num_frames: int = 0
    real: torch.Tensor | None = None  # (T, 3, h, w) in [0, 1]; kept for network metrics only
    gen: torch.Tensor | None = None
    fps: dict[str, float] | None = None  # videos only
    frame_values: dict[str, torch.Tensor] = field(default_factory=dict)  # SSIM/PSNR of each frame
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


def _fps_differ(fps: dict[str, float] | None) -> bool:
    if fps is None or not all(math.isfinite(v) and v > 0 for v in fps.values()):
        return False  # unknown rates: nothing to compare
    return not math.isclose(fps["real"], fps["generated"], rel_tol=1e-3)


def _decode_pair(pair: MediaPair, suite: MetricSuite, num_frames: int, sample_rate: int, resolution: int | None,
                 crop_size: int | None, skip_bad: bool) -> _Decoded:
    """The work of one pair in a decode thread: decode its frames once, preprocess them, score
    the frame metrics; the frames are kept only for network metrics. Unreadable media raise
    :class:`MediaReadError`, or with ``skip_bad`` come back as a skip."""
    out = _Decoded(pair.name)
    try:
        real, gen = _read_pair(pair, num_frames, sample_rate, out)
    except MediaReadError as exc:
        if not skip_bad:
            raise
        out.skipped = str(exc)
        return out
    out.real = preprocess(real, resolution, crop_size, suite.device)
    out.gen = preprocess(gen, resolution, crop_size, suite.device)
    out.num_frames = out.real.shape[0]
    out.frame_values = {m: v.cpu() for m, v in suite.frame_metrics(out.real, out.gen).items()}
    if not suite.network_metrics:
        out.real = out.gen = None  # nothing else needs the frames: free them now
    return out


def default_decode_workers() -> int:
    """One decode thread per available core, at most 8 (each holds a decoded pair)."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def _in_order(fn, items: Sequence, workers: int, ahead: int) -> Iterator:
    """``fn(item)`` for each item on ``workers`` threads, yielded in the order of ``items`` with at
    most ``ahead`` submitted and not yet yielded (that bounds memory). An exception surfaces at
    its item, as in a plain loop; what is still queued is cancelled when the caller stops."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-decode") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _read_pair(pair: MediaPair, num_frames: int, sample_rate: int, out: _Decoded) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (T, H, W, 3) frames of both files, same shape; notes and fps go to ``out``."""
    if is_image(pair.real) != is_image(pair.generated):
        raise EvalError(f"{pair.name}: an image is paired with a video "
                        f"({pair.real.name} vs {pair.generated.name}): frame counts differ")
    if is_image(pair.real):
        real, gen = read_image(pair.real)[None], read_image(pair.generated)[None]
    else:
        with VideoFile(pair.real) as real_file, VideoFile(pair.generated) as gen_file:
            real, gen = _read_videos(pair, real_file, gen_file, num_frames, sample_rate, out)
    if real.shape != gen.shape:
        raise EvalError(f"{pair.name}: frame sizes differ: {pair.real} is {real.shape[1]}x{real.shape[2]}, "
                        f"{pair.generated} is {gen.shape[1]}x{gen.shape[2]}")
    return real, gen


def _read_videos(pair: MediaPair, real_file: VideoFile, gen_file: VideoFile, num_frames: int, sample_rate: int,
                 out: _Decoded) -> tuple[np.ndarray, np.ndarray]:
    n_real, n_gen = real_file.num_frames, gen_file.num_frames
    indices = frame_indices(num_frames, sample_rate, min(n_real, n_gen))
    if len(indices) != len(frame_indices(num_frames, sample_rate, max(n_real, n_gen))):
        # A reconstruction that lost frames would be scored on the frames it kept only.
        raise EvalError(f"{pair.name}: frame counts differ within the {num_frames} frames requested at "
                        f"stride {sample_rate}: {pair.real} has {n_real}, {pair.generated} has {n_gen}")
    if len(indices) < num_frames:
        out.notes.append(f"{pair.name}: shorter than requested ({num_frames} frames at stride {sample_rate}): "
                         f"real has {n_real}, generated has {n_gen} frames; using {len(indices)} frames "
                         f"(indices 0..{indices[-1]})")
    real, gen = real_file.read(indices), gen_file.read(indices)
    out.fps = {"real": real_file.fps, "generated": gen_file.fps}
    return real, gen


def results_path(res_dir: str | os.PathLike, num_frames: int, resolution: int | None) -> Path:
    """The reference's results file: ``<res_dir>/metric_{num_frames}f_{resolution}res.json``."""
    return Path(res_dir) / f"metric_{num_frames}f_{resolution}res.json"


def _compared_dirs(real_dir: str | os.PathLike, gen_dir: str | os.PathLike) -> dict[str, str]:
    return {"real_video_dir": str(Path(real_dir).resolve()), "generated_video_dir": str(Path(gen_dir).resolve())}


def check_results_file(path: Path, real_dir: str | os.PathLike, gen_dir: str | os.PathLike,
                       overwrite: bool = False) -> None:
    """Before any work: ``path`` can be written, and a results file already there is of the
    same two folders (a rerun replaces it) or ``overwrite`` is set. A file of another comparison
    (e.g. ``_spatial`` after ``_rec`` into one folder) or of unknown origin is never replaced
    silently."""
    path = Path(path)
    if path.is_dir():
        raise EvalError(f"cannot write results to {path}: it is a folder")
    check_folder_location(path.parent, "cannot write results under", EvalError)
    if not path.exists() or overwrite:
        return
    try:
        previous = json.loads(path.read_text())
        previous = {k: previous.get(k) for k in ("real_video_dir", "generated_video_dir")}
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous == _compared_dirs(real_dir, gen_dir):
        return
    origin = ("another comparison ({real_video_dir} vs {generated_video_dir})".format(**previous)
              if previous and all(previous.values()) else "an unknown comparison")
    raise OutputExistsError(f"{path} holds the results of {origin}; use another --res_dir, "
                            f"or --overwrite to replace it")


def write_results(path: Path, result: dict) -> None:
    """The JSON (floats at full repr precision), written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)


def evaluate_dirs(
    real_dir: str | os.PathLike,
    gen_dir: str | os.PathLike,
    metrics: Sequence[str] = DEFAULT_EVAL_METRICS,
    num_frames: int = 17,
    sample_rate: int = 1,
    resolution: int | None = 256,
    crop_size: int | None = None,
    device: str | torch.device | None = "cpu",
    batch_size: int = 2,
    subset_size: int | None = None,
    skip_bad: bool = False,
    suite: MetricSuite | None = None,
    pwc_weights: str | os.PathLike | None = None,
    progress: bool = True,
    results_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    decode_workers: int | None = None,
) -> dict:
    """Mean metrics over all (video, frame) pairs (FloLPIPS: over consecutive frame pairs).

    Returns ``{metric: mean, ..., "per_video": {name: {...}}, "num_videos", "skipped",
    "warnings", "protocol"}``. A metric with no value (FloLPIPS on images only) is None.
    Corrupt media raise :class:`MediaReadError`, or with ``skip_bad`` are skipped and listed.
    With ``results_file``, the result is also written there as JSON (`check_results_file` rules,
    checked before any work).
    """
    check_settings(num_frames=num_frames, sample_rate=sample_rate, resolution=resolution, crop_size=crop_size,
                   batch_size=batch_size, subset_size=subset_size, decode_workers=decode_workers)
    wanted = suite.metrics if suite is not None else metrics
    if "fvd" in wanted:
        from .fvd import FVD_NUM_FRAMES

        if num_frames < FVD_NUM_FRAMES:
            raise EvalError(f"fvd uses the first {FVD_NUM_FRAMES} evaluated frames of each video: pass "
                            f"--num_frames >= {FVD_NUM_FRAMES} (got {num_frames})")
    if suite is None:
        device = resolve_device(device)
    if results_file is not None:
        check_results_file(Path(results_file), real_dir, gen_dir, overwrite)
    pairs = pair_files(real_dir, gen_dir)
    if subset_size is not None:
        pairs = pairs[:subset_size]
    suite = suite or MetricSuite(metrics, device, pwc_weights=pwc_weights)
    notes: list[str] = []
    skipped: list[dict[str, str]] = []
    no_flow: list[str] = []
    acc = _Accumulator()
    per_video: dict[str, dict] = {}
    features: dict[str, list[torch.Tensor]] = {"real": [], "generated": []}  # FVD's, in pair order
    bar = tqdm(total=len(pairs), desc="eval", unit="video", disable=not progress)

    decode = functools.partial(_decode_pair, suite=suite, num_frames=num_frames, sample_rate=sample_rate,
                               resolution=resolution, crop_size=crop_size, skip_bad=skip_bad)
    workers = decode_workers or default_decode_workers()
    # Pairs are decoded and their frame metrics scored on all cores (decoding, torch and BLAS
    # release the GIL) while this thread runs the networks on batches of `batch_size` pairs.
    # Results come back in pair order, so values, warnings and the first error are those of a
    # plain loop, and the means are exact sums (fsum): the same on any number of threads.
    # The parallelism is across pairs, so BLAS (SSIM's filter) runs one thread per call: its own
    # threads on top of the decode threads would oversubscribe the cores (2x slower measured).
    with threadpool_limits(1, user_api="blas"), \
            contextlib.closing(_in_order(decode, pairs, workers, ahead=workers + batch_size)) as decoded:
        batch: list[_Decoded] = []
        for item in decoded:
            for note in item.notes:
                logger.warning(note)
            notes.extend(item.notes)
            if item.skipped is not None:
                logger.warning("skipping %s: %s", item.name, item.skipped)
                skipped.append({"name": item.name, "reason": item.skipped})
            else:
                batch.append(item)
            if len(batch) == batch_size:
                _score_batch(batch, suite, acc, per_video, no_flow, features)
                batch = []
            bar.update(1)
        if batch:
            _score_batch(batch, suite, acc, per_video, no_flow, features)
    bar.close()
    if not per_video:
        raise EvalError(f"no pair could be evaluated ({len(skipped)} skipped)")
    fps_mismatch = [name for name, entry in per_video.items() if entry["fps_mismatch"]]
    if fps_mismatch:
        fps = per_video[fps_mismatch[0]]["fps"]
        note = (f"{len(fps_mismatch)} pair(s) at different frame rates, e.g. {fps_mismatch[0]}: real "
                f"{fps['real']:g} fps, generated {fps['generated']:g} fps; frames are compared by index, so a "
                f"temporally subsampled video is scored against other moments ({', '.join(fps_mismatch[:10])})")
        logger.warning(note)
        notes.append(note)
    if no_flow:
        note = f"flolpips skipped for {len(no_flow)} single-frame item(s) (needs >= 2 frames): {', '.join(no_flow[:10])}"
        logger.warning(note)
        notes.append(note)
    result: dict = {**_compared_dirs(real_dir, gen_dir), **{m: acc.mean(m) for m in suite.metrics}}
    if suite.i3d is not None:
        from .fvd import FewVideosWarning, fvd

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FewVideosWarning)
            result.update(fvd(torch.cat(features["real"]), torch.cat(features["generated"])))
        for warning in caught:
            logger.warning(str(warning.message))
            notes.append(str(warning.message))
    result.update(
        per_video=per_video,
        num_videos=len(per_video),
        num_frames_evaluated=sum(entry["num_frames"] for entry in per_video.values()),
        num_fps_mismatch=len(fps_mismatch),
        skipped=skipped,
        num_skipped=len(skipped),
        warnings=notes,
        protocol=_protocol(suite, num_frames, sample_rate, resolution, crop_size),
    )
    if results_file is not None:
        write_results(Path(results_file), result)
    return result


def _score_batch(batch: list[_Decoded], suite: MetricSuite, acc: _Accumulator, per_video: dict,
                 no_flow: list, features: dict[str, list[torch.Tensor]]) -> None:
    """Network metrics of the batch (videos of one frame size share a call), then each video's
    entry and values in pair order; FVD's I3D features are collected for the set statistic."""
    network: dict[str, dict[str, torch.Tensor]] = {item.name: {} for item in batch}
    if suite.i3d is not None:
        features["real"].append(suite.video_features([item.real for item in batch]))
        features["generated"].append(suite.video_features([item.gen for item in batch]))
    if suite.lpips is not None or suite.flolpips is not None:
        groups: dict[tuple, list[_Decoded]] = {}
        for item in batch:
            groups.setdefault(tuple(item.real.shape[-2:]), []).append(item)
        for items in groups.values():
            counts = [item.real.shape[0] for item in items]
            values = suite.batch_metrics(torch.cat([item.real for item in items]),
                                         torch.cat([item.gen for item in items]), counts)
            for k, item in enumerate(items):
                network[item.name] = {metric: split[k] for metric, split in values.items()}
    for item in batch:
        entry: dict = {"num_frames": item.num_frames}
        for metric, values in {**item.frame_values, **network[item.name]}.items():
            if metric == "flolpips" and entry["num_frames"] < 2:
                no_flow.append(item.name)
                entry["flolpips"] = None
                continue
            acc.add(metric, values.tolist())
            entry[metric] = float(values.double().mean())
        entry.update(fps=item.fps, fps_mismatch=_fps_differ(item.fps))
        per_video[item.name] = entry


def _protocol(suite: MetricSuite, num_frames: int, sample_rate: int, resolution: int | None,
              crop_size: int | None) -> dict:
    return {
        "metrics": suite.metrics,
        "num_frames": num_frames,
        "sample_rate": sample_rate,
        "frame_indices": f"0, {sample_rate}, ..., {sample_rate * (num_frames - 1)} (fewer if the video is shorter)",
        "resolution": resolution,
        "resize": "short side, torch interpolate bilinear align_corners=False, no antialias, float32 [0,1]",
        "crop_size": crop_size,
        "pairing": "by file name without extension",
        "ssim": "per channel, gaussian 11x11 sigma 1.5, C1=0.01^2, C2=0.03^2, float64, valid region, mean",
        "psnr": "20*log10(1/sqrt(mse)), mse over C*H*W in float64, 100 if mse < 1e-10",
        "lpips": "lpips AlexNet v0.1, inputs in [-1,1], mean of the spatial distance map",
        "flolpips": "AlexNet v0.1 layer maps pooled by |flow(real_t,real_t+1) - flow(gen_t,gen_t+1)| (PWC-Net); "
                    "uniform weights where the flows agree exactly",
        "fvd": "Kinetics-400 RGB I3D logits (400) of the first 16 evaluated frames resized to 224x224 "
               "(bilinear, no antialias) in [-1,1]; Frechet distance of the real vs generated sets "
               "(np.cov ddof 1, scipy sqrtm real part, float64); a set statistic over all videos",
        "device": str(suite.device),
    }
