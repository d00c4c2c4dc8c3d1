"""`run_export(cfg)`: encode a CSV's clips to posterior moments in shards, resumable, stamped,
with exact per-channel statistics over all ranks.

Order of work: settings, checkpoint, table (no output yet); then the folder's stamp (a folder
holding another export is refused); then the shards this rank owns (shard k belongs to rank
k mod world_size) that do not exist yet; finally rank 0 writes the index and the complete manifest
from the shard headers. Clips are decoded in DataLoader workers while the main process encodes.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from ..config import check_required
from ..data import build_dataloader
from ..distributed import DistEnv, barrier, process_group, rank0_decides
from ..errors import check_folder_location
from ..inference.dataset import InferenceDataset, collate_items, group_by_shape
from ..inference.latent_stats import LatentStats, shift_scale_text
from ..models import VideoVAEPipeline
from ..models.checkpoint_io import read_pipeline_config, resolve_checkpoint_files
from ..precision import autocast
from ..weights import sha256_of
from .encode import decode_psnr, encode_moments
from .manifest import make_stamp, read_manifest, stamp_mismatches
from .storage import (INDEX_NAME, LATENT_DTYPES, MANIFEST_NAME, SHARD_DIR, STATUS_OK, ExportError,
                      read_shard_meta, remove_stale_temporaries, row_key, shard_name, write_index,
                      write_json, write_shard)

logger = logging.getLogger(__name__)


def _prepare_folder(folder: Path, stamp: dict, ckpt_path: str, data_path: str) -> None:
    """A new folder gets the stamp; an existing export continues only with the same stamp."""
    existing = read_manifest(folder)
    if existing is not None:
        diff = stamp_mismatches(existing, stamp)
        if diff:
            raise ExportError(f"{folder} holds an export made with other settings ({', '.join(diff)} differ): "
                              "use another --save-dir, or the same config, checkpoint and CSV to resume it")
        remove_stale_temporaries(folder)
        (folder / SHARD_DIR).mkdir(exist_ok=True)
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ExportError(f"--save-dir {folder} exists and is not a latent export (no {MANIFEST_NAME}); "
                          "pass a new or empty folder")
    try:
        (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create {folder}: {err.strerror}") from err
    write_json(folder / MANIFEST_NAME, {**stamp, "complete": False, "ckpt_path": ckpt_path, "data_path": data_path})


def run_export(cfg: Any, verbose: bool = True) -> dict:
    """Runs (or resumes) the export; returns the final manifest (rank 0 also writes it)."""
    check_required(cfg, "encode")  # every other setting was checked by load_config
    with process_group() as info:
        return _run(cfg, info, verbose)


def _run(cfg: Any, info: DistEnv, verbose: bool) -> dict:
    start = time.time()
    ex, ds_cfg, folder = cfg.export, cfg.dataset, Path(cfg.save_dir)
    check_folder_location(folder, "--save-dir", ExportError)
    config_path, weights_path = resolve_checkpoint_files(cfg.ckpt_path)  # a missing checkpoint fails here
    clips = InferenceDataset(ds_cfg.data_path, whole_video=ex.whole_video, num_frames=ds_cfg.num_frames,
                             frame_interval=ds_cfg.frame_interval, image_size=tuple(ds_cfg.image_size),
                             transform_name=ds_cfg.transform_name, read_timeout_s=ds_cfg.read_timeout_s)
    num_rows = len(clips) if cfg.num_samples is None else min(cfg.num_samples, len(clips))
    hashes = rank0_decides(lambda: (sha256_of(weights_path), sha256_of(ds_cfg.data_path)))
    pipe = VideoVAEPipeline.from_pretrained(config_path.parent, micro_frame_size=cfg.model.micro_frame_size,
                                            micro_batch_size=cfg.model.spatial.micro_batch_size)
    pipe = pipe.to(info.device).eval()
    if cfg.tiling:
        pipe.enable_tiling()
    stamp = make_stamp(
        vae_config=read_pipeline_config(config_path), weights_sha256=hashes[0],
        shift=pipe.shift.flatten().tolist(), scale=pipe.scale.flatten().tolist(),
        micro_frame_size=pipe.micro_frame_size,
        window={"whole_video": bool(ex.whole_video), "num_frames": ds_cfg.num_frames,
                "frame_interval": ds_cfg.frame_interval, "image_size": list(ds_cfg.image_size),
                "transform_name": ds_cfg.transform_name},
        compute={"dtype": cfg.dtype, "tiling": bool(cfg.tiling), "batch_size": cfg.batch_size},
        storage={"latent_dtype": ex.latent_dtype, "shard_size": ex.shard_size, "qa_every": ex.qa_every},
        data_sha256=hashes[1], num_rows=num_rows)
    rank0_decides(lambda: _prepare_folder(folder, stamp, str(cfg.ckpt_path), str(ds_cfg.data_path)))

    num_shards = math.ceil(num_rows / ex.shard_size)
    shard_dir = folder / SHARD_DIR
    todo = [k for k in range(info.rank, num_shards, info.world_size) if not (shard_dir / shard_name(k)).exists()]
    rows = [r for k in todo for r in range(k * ex.shard_size, min((k + 1) * ex.shard_size, num_rows))]
    logger.info("%d rows in %d shards; this rank encodes %d shards (%d rows) into %s", num_rows, num_shards,
                len(todo), len(rows), folder)
    loader = build_dataloader(Subset(clips, rows), 1, num_workers=cfg.num_workers, seed=cfg.seed, rank=info.rank,
                              drop_last=False, persistent_workers=False, pin_memory=False, collate_fn=collate_items)
    writer = _ShardWriter(pipe, cfg, info.device, stamp["vae"]["weights_sha256"], shard_dir)
    progress = tqdm(total=len(rows), unit="clip", desc="export", disable=not (verbose and info.is_main))
    with progress:
        for (item,) in loader:
            writer.add(item)
            shard = item["index"] // ex.shard_size
            if item["index"] + 1 == min((shard + 1) * ex.shard_size, num_rows):  # the shard's last row
                writer.write(shard)
            progress.update(1)
    barrier()

    channels = pipe.shift.numel()
    manifest = rank0_decides(lambda: _finish(folder, stamp, num_shards, channels, cfg, start, verbose))
    barrier()
    return manifest


def _finish(folder: Path, stamp: dict, num_shards: int, channels: int, cfg: Any, start: float,
            verbose: bool) -> dict:
    # Every shard's header once: its index rows, and its latent moments merged in shard order
    # (Chan), so the statistics are the same whatever the number of ranks that wrote the shards.
    metas = [read_shard_meta(folder / SHARD_DIR / shard_name(k)) for k in range(num_shards)]
    rows = [r for meta in metas for r in meta["rows"]]
    skipped = Counter(r["status"] for r in rows if r["status"] != STATUS_OK)
    num_ok = len(rows) - sum(skipped.values())
    if num_ok == 0:
        example = next(f"{r['path']}: {r['status']}" for r in rows) if rows else "no rows"
        raise ExportError(f"none of the {len(rows)} rows of {cfg.dataset.data_path} could be encoded, e.g. {example}")
    moments = LatentStats.merged([LatentStats.from_dict(meta["moments"]) for meta in metas], channels)
    mean, std = moments.mean.tolist(), moments.std.tolist()
    write_index(folder / INDEX_NAME, rows)
    psnrs = [r["psnr"] for r in rows if r["psnr"] is not None]
    manifest = {
        **stamp, "complete": True, "ckpt_path": str(cfg.ckpt_path), "data_path": str(cfg.dataset.data_path),
        "index": INDEX_NAME, "num_shards": num_shards,
        "counts": {"rows": len(rows), "ok": num_ok, "skipped": sum(skipped.values()), "skip_reasons": dict(skipped)},
        "stats": {"count": int(moments.count[0]), "mean": mean, "std": std, "shift": mean, "scale": std},
        "qa": {"clips": len(psnrs), "psnr_mean": sum(psnrs) / len(psnrs) if psnrs else None},
    }
    write_json(folder / MANIFEST_NAME, manifest)
    if verbose:
        print(f"exported {num_ok} of {len(rows)} rows to {folder} ({len(rows) - num_ok} skipped) in "
              f"{time.time() - start:.1f} s\nlatent statistics (for the model config):\n{shift_scale_text(mean, std)}",
              flush=True)
    return manifest


class _ShardWriter:
    """Encodes one shard's clips in `batch_size` groups (consecutive readable rows in row order,
    split by shape: the same batches whatever the rank, the loader's timing or a resume) and
    writes the shard file.

    A batch is encoded as soon as it is full, not when the shard is: the loader's workers keep
    decoding (they only run `prefetch_factor` items ahead) while the main process encodes, and
    only the encoded moments, not the shard's pixels, wait for the shard to end."""

    def __init__(self, pipe: VideoVAEPipeline, cfg: Any, device: torch.device, weights_sha256: str, shard_dir: Path):
        self.pipe, self.cfg, self.device, self.shard_dir = pipe, cfg, device, shard_dir
        self.dtype = LATENT_DTYPES[cfg.export.latent_dtype]
        self.weights_sha256 = weights_sha256
        self.items: list[dict] = []  # the shard's rows so far, without their pixels once encoded
        self.waiting: list[dict] = []  # readable rows not encoded yet (fewer than batch_size)
        self.encoded: dict[int, tuple[torch.Tensor, torch.Tensor, float | None]] = {}

    def add(self, item: dict) -> None:
        """The shard's next row (rows arrive in order)."""
        self.items.append(item)
        if item["error"] is None:
            item["frames"] = int(item["video"].shape[1])
            self.waiting.append(item)
            if len(self.waiting) == self.cfg.batch_size:
                self._encode_waiting()

    def write(self, shard: int) -> None:
        """Encodes what is left of the shard and writes its file."""
        self._encode_waiting()
        tensors: dict[str, torch.Tensor] = {}
        moments = LatentStats(self.pipe.shift.numel())
        rows = []
        for item in self.items:
            row = {"row": item["index"], "path": item["source"], "shard": shard_name(shard), "key": None,
                   "shape": None, "frames": None, "fps": item["fps"], "is_image": bool(item["is_image"]),
                   "status": item["error"] or STATUS_OK, "psnr": None}
            if item["error"] is None:
                mean, logvar, row["psnr"] = self.encoded[item["index"]]
                key = row_key(item["index"])
                tensors[f"{key}.mean"], tensors[f"{key}.logvar"] = mean, logvar
                moments.update(mean, channel_dim=0)
                row.update(key=key, shape=list(mean.shape), frames=item["frames"])
            else:
                logger.warning("skipping row %d %s: %s", item["index"], item["source"], item["error"])
            rows.append(row)
        meta = {"shard": shard, "rows": rows, "moments": moments.to_dict(), "weights_sha256": self.weights_sha256}
        write_shard(self.shard_dir / shard_name(shard), tensors, meta)
        self.items, self.encoded = [], {}

    def _encode_waiting(self) -> None:
        for group in group_by_shape(self.waiting):
            self.encoded.update(self._encode(group))
        for item in self.waiting:
            item["video"] = None  # the pixels are no longer needed: a shard holds only moments
        self.waiting = []

    def _encode(self, group: list[dict]) -> dict[int, tuple[torch.Tensor, torch.Tensor, float | None]]:
        x = torch.stack([it["video"] for it in group])  # on the CPU: encode_moments moves one chunk at a time
        with autocast(self.device, self.cfg.dtype):
            mean, logvar = encode_moments(self.pipe, x)
        mean, logvar = mean.to(self.dtype).cpu(), logvar.to(self.dtype).cpu()
        out = {}
        qa_every = self.cfg.export.qa_every
        for i, item in enumerate(group):
            value = None
            if qa_every and item["index"] % qa_every == 0:
                with autocast(self.device, self.cfg.dtype):  # the stored values, as a reader gets them
                    value = decode_psnr(self.pipe, mean[i:i + 1].float(), x[i:i + 1])
            out[item["index"]] = (mean[i].clone(), logvar[i].clone(), value)
        return out
