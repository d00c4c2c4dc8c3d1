"""`run_inference(cfg)`: reconstruct a CSV's samples, write `_ori/_rec/_spatial`, metrics, stats."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import check_required
from ..data import build_dataloader
from ..distributed import DistEnv, all_gather_objects, barrier, process_group, rank0_decides
from ..models import VideoVAEPipeline
from ..models.checkpoint_io import resolve_pipeline_dir
from ..precision import autocast
from .dataset import InferenceDataset, collate_items, group_by_shape
from .latent_stats import LatentStats
from .outputs import OutputLayout, output_names, to_uint8_frames
from .report import KINDS, format_summary, frame_metrics, summarize
from ..errors import OutputExistsError, UserError

logger = logging.getLogger(__name__)


class InferenceError(UserError, RuntimeError):
    """Settings or data that make the run impossible (the message says what to change)."""


def sample_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """Latent noise per (seed, first sample index of the batch), whatever the rank or worker."""
    state = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(state)


def _reconstruct_group(pipe: VideoVAEPipeline, items: list[dict], cfg: Any, info: DistEnv,
                       layout: OutputLayout, names: dict[int, str], stats: LatentStats | None) -> list[dict]:
    x = torch.stack([item["video"] for item in items]).to(info.device)
    generator = sample_generator(cfg.seed, items[0]["index"], info.device) if cfg.sample else None
    with autocast(info.device, cfg.dtype):
        out = pipe.reconstruct(x, sample=cfg.sample, generator=generator, rec=True, spatial=True, z=True)
    if stats is not None:
        stats.update(out.z)
    records = []
    for i, item in enumerate(items):
        name = names[item["index"]]
        # NaN/inf would be written as black or saturated frames and scored like any others.
        nonfinite = {kind: int((~torch.isfinite(getattr(out, kind)[i])).sum()) for kind in KINDS}
        if any(nonfinite.values()):
            logger.warning("sample %d %s: the reconstruction holds non-finite values (NaN/inf: %s); its "
                           "frames and metrics are meaningless: check the checkpoint", item["index"],
                           item["path"], ", ".join(f"{k} {n}" for k, n in nonfinite.items() if n))
        ori, spatial, rec = (to_uint8_frames(v[i]) for v in (x, out.spatial, out.rec))
        files = layout.write(name, ori, spatial, rec, fps=cfg.fps, lossless=cfg.lossless)
        records.append({"name": name, "index": item["index"], "path": item["path"], "files": files,
                        "is_image": bool(item["is_image"]), "num_frames": int(ori.shape[0]),
                        "rec": frame_metrics(ori, rec), "spatial": frame_metrics(ori, spatial),
                        "nonfinite": nonfinite})
    return records


def run_inference(cfg: Any, verbose: bool = True) -> dict:
    """Runs the whole inference; returns the metrics report (also written as JSON by rank 0).

    Order of failure: settings, then the checkpoint, then the data, so a wrong checkpoint
    never costs a data pass. Under torchrun each rank takes every world_size-th sample.
    """
    check_required(cfg, "inference")  # every other setting was checked by load_config
    with process_group() as info:
        return _run(cfg, info, verbose)


def _run(cfg: Any, info: DistEnv, verbose: bool) -> dict:
    start = time.time()
    model_cfg = cfg.model
    # Architecture and weights from the checkpoint; chunk sizes from the inference config.
    resolved = resolve_pipeline_dir(cfg.ckpt_path)
    pipe = VideoVAEPipeline.from_pretrained(resolved, micro_frame_size=model_cfg.micro_frame_size,
                                            micro_batch_size=model_cfg.spatial.micro_batch_size)
    pipe = pipe.to(info.device).eval()
    if cfg.tiling:
        pipe.enable_tiling()
    ds_cfg = cfg.dataset
    try:
        dataset = InferenceDataset(ds_cfg.data_path, num_frames=ds_cfg.num_frames,
                                   frame_interval=ds_cfg.frame_interval, image_size=tuple(ds_cfg.image_size),
                                   transform_name=ds_cfg.transform_name, read_timeout_s=ds_cfg.read_timeout_s)
    except ValueError as err:
        raise InferenceError(str(err)) from err
    rows = list(range(len(dataset) if cfg.num_samples is None else min(cfg.num_samples, len(dataset))))
    try:
        names = output_names(dataset.paths, rows, cfg.output_names)
    except ValueError as err:
        raise InferenceError(str(err)) from err
    layout = OutputLayout.from_save_dir(cfg.save_dir, cfg.save_grid)

    def prepare() -> None:
        try:
            layout.prepare(overwrite=cfg.overwrite, planned_samples=len(rows))
        except FileExistsError as err:
            raise OutputExistsError(str(err)) from err

    rank0_decides(prepare)  # every rank raises rank 0's refusal, none waits for it forever

    my_rows = rows[info.rank::info.world_size]  # every world_size-th row: balanced, no overlap
    # One pass in row order: no persistent workers, and items stay unpinned lists.
    loader = build_dataloader(Subset(dataset, my_rows), cfg.batch_size, num_workers=cfg.num_workers,
                              seed=cfg.seed, rank=info.rank, drop_last=False, persistent_workers=False,
                              pin_memory=False, collate_fn=collate_items)
    stats = LatentStats(pipe.shift.numel()) if cfg.cal_stats else None
    records, skipped = [], []
    progress = tqdm(total=len(my_rows), unit="sample", desc="inference", disable=not (verbose and info.is_main))
    with progress, logging_redirect_tqdm():  # skip warnings print above the bar, not through it
        for batch in loader:
            for item in batch:
                if item["error"] is not None:
                    logger.warning("skipping sample %d %s: %s", item["index"], item["path"], item["error"])
                    skipped.append({"name": names[item["index"]], "index": item["index"], "path": item["path"],
                                    "reason": item["error"]})
            for group in group_by_shape([item for item in batch if item["error"] is None]):
                records.extend(_reconstruct_group(pipe, group, cfg, info, layout, names, stats))
            progress.update(len(batch))

    gathered = all_gather_objects({"records": records, "skipped": skipped,
                                   "stats": stats.to_dict() if stats is not None else None})
    records = sorted((r for g in gathered for r in g["records"]), key=lambda r: r["index"])
    skipped = sorted((s for g in gathered for s in g["skipped"]), key=lambda s: s["index"])
    if not records:
        example = f"{skipped[0]['path']}: {skipped[0]['reason']}" if skipped else "no rows"
        raise InferenceError(f"none of the {len(rows)} samples of {ds_cfg.data_path} could be used, "
                             f"e.g. {example}")
    if stats is not None:
        stats = LatentStats.merged([LatentStats.from_dict(g["stats"]) for g in gathered], stats.mean.numel())

    report = summarize(cfg, records, skipped, stats, pipe, layout, names, dataset.paths, ckpt_path=cfg.ckpt_path,
                       resolved_ckpt=resolved, device=info.device, world_size=info.world_size,
                       seconds=time.time() - start)
    if report["num_nonfinite"]:
        logger.warning("%d of %d samples have non-finite reconstructions (listed as nonfinite_samples in "
                       "%s): the checkpoint is broken or the inputs overflow it", report["num_nonfinite"],
                       len(records), layout.metrics_json)
    if info.is_main:  # every rank's samples are written: the records were gathered above
        layout.finish(report)
        if verbose:
            print(format_summary(report))
    barrier()
    return report
