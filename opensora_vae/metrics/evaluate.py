"""Evaluate reconstructions against originals: two folders of videos/images paired by name,
scored by the protocol of `EvalSettings` (frames, preprocessing, pairing: `protocol.py`). Each
file is decoded once for all metrics.

The scoring of one pair is one function for every caller: :func:`score_pair` scores a (real,
reconstructed) clip already in memory exactly as the eval scores the two files (inference and
in-loop validation use it), and returns a :class:`ClipResult`. Results of many pairs, from any
number of ranks, are merged by `summary.gather_results` and `summary.summarize_results`: means are
exact sums in pair order, so they are the same bit for bit whatever the ranks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ..data.video_io import MediaReadError, VideoFile, is_image, read_image
from ..errors import OutputExistsError, UserError, check_folder_location
from ..files import atomic_write_text
from .protocol import EvalError, MediaPair, frame_indices, pair_files, preprocess
from .settings import EVAL_METRICS, EvalSettings

if TYPE_CHECKING:  # the metric modules are imported when a metric is asked for (lpips costs seconds)
    from .flolpips import FloLPIPS
    from .lpips_metric import LPIPSMetric

logger = logging.getLogger(__name__)


class MetricSuite:
    """The networks of the requested metrics, built once. Each metric's module is imported only
    when that metric is requested: an SSIM/PSNR eval never loads lpips or torchvision."""

    def __init__(self, settings: EvalSettings, lpips_metric: LPIPSMetric | None = None,
                 flolpips: FloLPIPS | None = None, frames_per_batch: int | None = None):
        self.metrics = list(settings.metrics)
        self.device = settings.device  # resolved once, by EvalSettings
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

                flolpips = FloLPIPS(pwc_weights=settings.pwc_weights)
            self.flolpips = flolpips.to(self.device)
        self.i3d = None
        if "fvd" in self.metrics:
            from .fvd import load_i3d

            self.i3d = load_i3d().to(self.device)

    def check(self, settings: EvalSettings) -> None:
        """The suite can score ``settings``: it holds their metrics' networks, on their device."""
        missing = sorted(set(settings.metrics) - set(self.metrics))
        if missing or self.device != settings.device:
            raise ValueError(f"this MetricSuite ({self.metrics} on {self.device}) cannot score {list(settings.metrics)} "
                             f"on {settings.device}")

    def video_features(self, videos: list[torch.Tensor], settings: EvalSettings) -> list[np.ndarray]:
        """FVD features of each (T, 3, h, w) video in [0, 1], by the protocol's card: (400,) for
        a set statistic, (lengths, 400) for Open-Sora-Plan's clip lengths."""
        from .fvd import FVD_NUM_FRAMES, clip_length_features, i3d_features

        card = settings.card
        if card.fvd_averaging == "minibatch_cliplengths":
            return [clip_length_features(self.i3d, v, card.fvd_min_frames).numpy() for v in videos]
        feats = i3d_features(self.i3d, videos, batch_size=max(1, self.frames_per_batch // 2),
                             num_frames=FVD_NUM_FRAMES, fvd_input=card.fvd_input)
        return list(feats.numpy())

    def frame_metrics(self, real: torch.Tensor, fake: torch.Tensor,
                      metrics: Sequence[str] = EVAL_METRICS) -> dict[str, torch.Tensor]:
        """SSIM/PSNR of each frame of (N, 3, H, W) batches. A frame's value depends on that frame
        alone, bit for bit, whatever the batch: they are computed per pair, where it was decoded."""
        return {name: fn(real, fake) for name, fn in self._frame_fns.items() if name in metrics}

    def batch_metrics(self, real: torch.Tensor, fake: torch.Tensor, counts: list[int],
                      metrics: Sequence[str] = EVAL_METRICS) -> dict[str, list[torch.Tensor]]:
        """LPIPS (per frame) and FloLPIPS (per consecutive frame pair) of videos of ``counts``
        frames concatenated in (N, 3, H, W) batches, split per video. Network convolutions round
        differently by batch size on CPU, so the batches (``batch_size`` videos of one frame size,
        ``frames_per_batch`` frames per call) fix the values."""
        out = {}
        if self.lpips is not None and "lpips" in metrics:
            out["lpips"] = list(self.lpips(real, fake, batch_size=self.frames_per_batch).cpu().split(counts))
        if self.flolpips is not None and "flolpips" in metrics:
            offsets = np.cumsum([0] + counts[:-1])
            starts = [int(o) + t for o, n in zip(offsets, counts) for t in range(n - 1)]
            pairs_per_call = max(1, self.frames_per_batch // 2)  # each pair runs PWC-Net on 4 frames
            values = self.flolpips.video(real, fake, starts, batch_size=pairs_per_call)
            out["flolpips"] = list(values.cpu().split([max(n - 1, 0) for n in counts]))
        return out


@dataclass
class ClipResult:
    """One scored (real, reconstructed) pair: what a rank contributes to the merge (picklable).

    ``values[metric]``: per evaluated frame (FloLPIPS: per consecutive frame pair), in frame
    order; ``means[metric]``: their float64 mean (None: FloLPIPS of a single frame);
    ``frame_indices``: each evaluated frame's index in the file; ``features``: FVD's I3D
    features ("real", "generated") unless the pair is ``fvd_excluded`` (the reason)."""

    index: int
    name: str
    num_frames: int
    frame_indices: list[int]
    values: dict[str, list[float]]
    means: dict[str, float | None]
    fps: dict[str, float] | None = None
    real: str | None = None
    generated: str | None = None
    features: dict[str, np.ndarray] | None = None
    fvd_excluded: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fps_mismatch(self) -> bool:
        fps = self.fps
        if fps is None or not all(math.isfinite(v) and v > 0 for v in fps.values()):
            return False  # unknown rates: nothing to compare
        return not math.isclose(fps["real"], fps["generated"], rel_tol=1e-3)


@dataclass
class _Prepared:
    """One pair, decoded and preprocessed (or the reason it was skipped)."""
    index: int
    name: str
    real_path: str | None = None
    gen_path: str | None = None
    num_frames: int = 0
    frame_indices: list[int] = field(default_factory=list)
    real: torch.Tensor | None = None  # (T, 3, h, w) in [0, 1]; kept for network metrics only
    gen: torch.Tensor | None = None
    fps: dict[str, float] | None = None  # videos only
    frame_values: dict[str, torch.Tensor] = field(default_factory=dict)  # SSIM/PSNR of each frame
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    fvd_excluded: str | None = None


def _as_frames(frames) -> np.ndarray:
    """uint8 (T, H, W, 3) frames as a numpy array (from numpy or a CPU/GPU tensor)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    return frames


def _prepare(item: _Prepared, real: np.ndarray, gen: np.ndarray, suite: MetricSuite,
             settings: EvalSettings) -> _Prepared:
    """Preprocess both clips (the protocol's resize and crop) and score the frame metrics; the
    frames are kept only for network metrics."""
    item.real = preprocess(real, settings.resolution, settings.crop_size, suite.device)
    item.gen = preprocess(gen, settings.resolution, settings.crop_size, suite.device)
    item.num_frames = item.real.shape[0]
    item.frame_values = {m: v.cpu() for m, v in suite.frame_metrics(item.real, item.gen, settings.metrics).items()}
    if not set(settings.metrics) & {"lpips", "flolpips", "fvd"}:
        item.real = item.gen = None  # nothing else needs the frames: free them now
    return item


def _decode_pair(indexed: tuple[int, MediaPair], suite: MetricSuite, settings: EvalSettings,
                 fvd_excluded: dict[str, str]) -> _Prepared:
    """The work of one pair in a decode thread: decode its frames once, prepare them.
    Unreadable media raise :class:`MediaReadError`, or with ``skip_bad`` come back as a skip."""
    index, pair = indexed
    out = _Prepared(index, pair.name, str(pair.real), str(pair.generated), fvd_excluded=fvd_excluded.get(pair.name))
    try:
        real, gen = _read_pair(pair, settings, out)
    except MediaReadError as exc:
        if not settings.skip_bad:
            raise
        out.skipped = str(exc)
        return out
    return _prepare(out, real, gen, suite, settings)


def score_pair(real, reconstructed, settings: EvalSettings, suite: MetricSuite, name: str = "clip",
               index: int = 0, frame_indices: Sequence[int] | None = None) -> ClipResult:
    """Score one (real, reconstructed) clip pair already in memory, exactly as the eval scores
    two files holding these frames (lossless): the protocol's resize and crop, every metric of
    ``settings``, FVD features for the merge.

    ``real``, ``reconstructed``: uint8 (T, H, W, 3) frames (numpy or tensor), the frames the eval
    would have read (the caller took the protocol's window). ``index`` orders results in the
    merge; ``frame_indices`` (default 0..T-1): each frame's index in its source video."""
    suite.check(settings)
    real, reconstructed = _as_frames(real), _as_frames(reconstructed)
    if real.shape != reconstructed.shape:
        raise EvalError(f"{name}: frame shapes differ: {real.shape} vs {reconstructed.shape}")
    item = _Prepared(index, name)
    item.frame_indices = list(frame_indices) if frame_indices is not None else list(range(real.shape[0]))
    if "fvd" in settings.metrics and real.shape[0] < settings.card.fvd_min_frames:
        item.fvd_excluded = f"{real.shape[0]} frame(s): fvd needs {settings.card.fvd_min_frames}"
    return _score_batch([_prepare(item, real, reconstructed, suite, settings)], suite, settings)[0]


def _score_batch(batch: list[_Prepared], suite: MetricSuite, settings: EvalSettings) -> list[ClipResult]:
    """Network metrics of the batch (videos of one frame size share a call), then each pair's
    result in pair order; FVD's I3D features for the pairs that enter FVD."""
    network: dict[int, dict[str, torch.Tensor]] = {item.index: {} for item in batch}
    features: dict[int, dict[str, np.ndarray]] = {}
    if "fvd" in settings.metrics:
        need = settings.card.fvd_min_frames
        for item in batch:
            if item.fvd_excluded is None and item.num_frames < need:
                # The container declared more frames than decoded (planned up front from its count).
                item.fvd_excluded = f"{item.num_frames} frame(s) decoded: fvd needs {need}"
        entering = [item for item in batch if item.fvd_excluded is None]
        if entering:
            real = suite.video_features([item.real for item in entering], settings)
            gen = suite.video_features([item.gen for item in entering], settings)
            for item, r, g in zip(entering, real, gen):
                features[item.index] = {"real": r, "generated": g}
    if {"lpips", "flolpips"} & set(settings.metrics):
        groups: dict[tuple, list[_Prepared]] = {}
        for item in batch:
            groups.setdefault(tuple(item.real.shape[-2:]), []).append(item)
        for items in groups.values():
            counts = [item.real.shape[0] for item in items]
            values = suite.batch_metrics(torch.cat([item.real for item in items]),
                                         torch.cat([item.gen for item in items]), counts, settings.metrics)
            for k, item in enumerate(items):
                network[item.index] = {metric: split[k] for metric, split in values.items()}
    results = []
    for item in batch:
        values, means = {}, {}
        for metric, tensor in {**item.frame_values, **network[item.index]}.items():
            if metric == "flolpips" and item.num_frames < 2:
                means["flolpips"] = None
                continue
            values[metric] = tensor.tolist()
            means[metric] = float(tensor.double().mean())
        results.append(ClipResult(
            index=item.index, name=item.name, num_frames=item.num_frames, frame_indices=item.frame_indices,
            values=values, means=means, fps=item.fps, real=item.real_path, generated=item.gen_path,
            features=features.get(item.index), fvd_excluded=item.fvd_excluded, notes=item.notes))
    return results


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


def _read_pair(pair: MediaPair, settings: EvalSettings, out: _Prepared) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (T, H, W, 3) frames of both files, same shape; notes, fps and frame indices go to ``out``."""
    if is_image(pair.real) != is_image(pair.generated):
        raise EvalError(f"{pair.name}: an image is paired with a video "
                        f"({pair.real.name} vs {pair.generated.name}): frame counts differ")
    if is_image(pair.real):
        real, gen = read_image(pair.real)[None], read_image(pair.generated)[None]
        out.frame_indices = [0]
    else:
        with VideoFile(pair.real) as real_file, VideoFile(pair.generated) as gen_file:
            real, gen = _read_videos(pair, real_file, gen_file, settings, out)
    if real.shape != gen.shape:
        raise EvalError(f"{pair.name}: frame sizes differ: {pair.real} is {real.shape[1]}x{real.shape[2]}, "
                        f"{pair.generated} is {gen.shape[1]}x{gen.shape[2]}")
    return real, gen


def _evaluated_indices(settings: EvalSettings, available: int) -> list[int]:
    return frame_indices(settings.num_frames, settings.sample_rate, available, settings.card.frame_spread)


def _read_videos(pair: MediaPair, real_file: VideoFile, gen_file: VideoFile, settings: EvalSettings,
                 out: _Prepared) -> tuple[np.ndarray, np.ndarray]:
    n_real, n_gen = real_file.num_frames, gen_file.num_frames
    num_frames, sample_rate = settings.num_frames, settings.sample_rate
    indices = _evaluated_indices(settings, min(n_real, n_gen))
    if len(indices) != len(_evaluated_indices(settings, max(n_real, n_gen))):
        # A reconstruction that lost frames would be scored on the frames it kept only.
        raise EvalError(f"{pair.name}: frame counts differ within the {num_frames} frames requested at "
                        f"stride {sample_rate}: {pair.real} has {n_real}, {pair.generated} has {n_gen}")
    if not indices:
        raise EvalError(f"{pair.name}: no frame to evaluate ({n_real} frames, {num_frames} requested at stride "
                        f"{sample_rate} by protocol {settings.protocol})")
    if len(indices) < num_frames:
        out.notes.append(f"{pair.name}: shorter than requested ({num_frames} frames at stride {sample_rate}): "
                         f"real has {n_real}, generated has {n_gen} frames; using {len(indices)} frames "
                         f"(indices 0..{indices[-1]})")
    real, gen = real_file.read(indices), gen_file.read(indices)
    out.fps = {"real": real_file.fps, "generated": gen_file.fps}
    out.frame_indices = list(indices)
    return real, gen


def plan_fvd(pairs: Sequence[MediaPair], settings: EvalSettings) -> dict[str, str]:
    """Before any work: the pairs that cannot enter FVD (images, videos with fewer evaluated
    frames than the protocol's FVD needs), by name with the reason. The other metrics still
    score them. Fewer than 2 pairs left for FVD refuses the run here, not after the other
    metrics ran. Frame counts are the containers' (no decoding)."""
    if "fvd" not in settings.metrics:
        return {}
    need = settings.card.fvd_min_frames
    excluded: dict[str, str] = {}
    for pair in pairs:
        if is_image(pair.real) or is_image(pair.generated):
            excluded[pair.name] = f"an image (1 frame): fvd needs {need} frames"
            continue
        try:
            with VideoFile(pair.real) as real_file, VideoFile(pair.generated) as gen_file:
                available = min(real_file.num_frames, gen_file.num_frames)
        except MediaReadError:
            if not settings.skip_bad:
                raise
            continue  # skipped (and counted) when it is decoded
        evaluated = len(_evaluated_indices(settings, available))
        if evaluated < need:
            excluded[pair.name] = f"{evaluated} evaluated frame(s): fvd needs {need}"
    if len(pairs) - len(excluded) < 2:
        names = ", ".join(f"{n} ({r})" for n, r in list(excluded.items())[:5])
        raise EvalError(f"fvd needs at least 2 pairs of videos with {need}+ evaluated frames; {len(excluded)} of "
                        f"{len(pairs)} pair(s) cannot enter it: {names}{' ...' if len(excluded) > 5 else ''}; "
                        f"remove fvd from --metric or evaluate longer videos")
    return excluded  # named in the results' warnings and fvd_excluded


def rank_pairs(num_pairs: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The pair positions one rank scores: whole batches, round robin (batch b goes to rank
    b % world_size), so every network call sees the batch one process would have made and the
    merged values equal one process's."""
    return [i for i in range(num_pairs) if (i // batch_size) % world_size == rank]


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
    atomic_write_text(path, json.dumps(result, indent=2))


def evaluate_dirs(real_dir: str | os.PathLike, gen_dir: str | os.PathLike, settings: EvalSettings, *,
                  suite: MetricSuite | None = None, progress: bool = True,
                  results_file: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """Mean metrics of two folders (see `summary.summarize_results` for the JSON's keys).

    Corrupt media raise :class:`MediaReadError`, or with ``settings.skip_bad`` are skipped and
    listed. With ``results_file``, the result is also written there as JSON (`check_results_file`
    rules, checked before any work). Under torchrun (a process group is initialised), each rank
    scores whole batches of pairs (:func:`rank_pairs`), the results are gathered, and every rank
    returns the same merged result; rank 0 writes the file."""
    from .. import distributed
    from .summary import gather_results, summarize_results

    if results_file is not None:
        check_results_file(Path(results_file), real_dir, gen_dir, overwrite)
    pairs = pair_files(real_dir, gen_dir)
    if settings.subset_size is not None:
        pairs = pairs[:settings.subset_size]
    fvd_excluded = plan_fvd(pairs, settings)
    suite = suite or MetricSuite(settings)
    suite.check(settings)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) \
        if distributed.is_initialized() else (0, 1)
    mine = [(i, pairs[i]) for i in rank_pairs(len(pairs), settings.batch_size, rank, world)]
    try:
        local, skipped = _score_pairs(mine, suite, settings, fvd_excluded, progress)
        failure = None
    except UserError as exc:
        if world == 1:
            raise
        local, skipped, failure = [], [], f"{type(exc).__name__}: {exc}"
    # A bad file is read by one rank only: every rank learns of it and stops with the same
    # one-line error (printed once, by rank 0), instead of rank 0 waiting for results that never come.
    failures = [f for f in distributed.all_gather_objects(failure) if f]
    if failures:
        raise EvalError(failures[0])
    results = gather_results(local)
    skipped = sorted((s for part in distributed.all_gather_objects(skipped) for s in part), key=lambda s: s[0])
    # The summary (bootstrap intervals, FVD) once, on rank 0; every rank returns the same dict.
    result = {**_compared_dirs(real_dir, gen_dir),
              **distributed.rank0_decides(lambda: summarize_results(results, settings,
                                                                    skipped=[s[1] for s in skipped]))}
    if rank == 0:  # each skip and warning reported once, whatever the number of ranks
        for entry in result["skipped"]:
            logger.warning("skipped %s: %s", entry["name"], entry["reason"])
        for note in result["warnings"]:
            logger.warning(note)
        if results_file is not None:
            write_results(Path(results_file), result)
    return result


def _score_pairs(pairs: list[tuple[int, MediaPair]], suite: MetricSuite, settings: EvalSettings,
                 fvd_excluded: dict[str, str], progress: bool) -> tuple[list[ClipResult], list[tuple[int, dict]]]:
    """This process's pairs: decoded and frame-scored on all cores (decoding, torch and BLAS
    release the GIL) while this thread runs the networks on batches of ``batch_size`` pairs.
    Results come back in pair order, so values and the first error are those of a plain loop."""
    results: list[ClipResult] = []
    skipped: list[tuple[int, dict[str, str]]] = []
    decode = functools.partial(_decode_pair, suite=suite, settings=settings, fvd_excluded=fvd_excluded)
    workers = settings.decode_workers or default_decode_workers()
    bar = tqdm(total=len(pairs), desc="eval", unit="video", disable=not progress)
    # The parallelism is across pairs, so BLAS (SSIM's filter) runs one thread per call: its own
    # threads on top of the decode threads would oversubscribe the cores (2x slower measured).
    with threadpool_limits(1, user_api="blas"), \
            contextlib.closing(_in_order(decode, pairs, workers, ahead=workers + settings.batch_size)) as decoded:
        batch: list[_Prepared] = []
        for item in decoded:
            if item.skipped is not None:
                skipped.append((item.index, {"name": item.name, "reason": item.skipped}))
            else:
                batch.append(item)
            if len(batch) == settings.batch_size:
                results += _score_batch(batch, suite, settings)
                batch = []
            bar.update(1)
        if batch:
            results += _score_batch(batch, suite, settings)
    bar.close()
    return results, skipped
