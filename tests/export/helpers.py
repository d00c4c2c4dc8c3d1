"""Shared by the export tests (and their subprocess workers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import CLIP_17, CLIP_100, REPO, build_tiny_pipeline, child_env, make_media_csv, run_entry

ENCODE_ENTRY = REPO / "scripts" / "encode_latents.py"
TINY_ENCODE = REPO / "configs" / "vae" / "encode" / "tiny.py"
# 32x32 clips, one row per shard so a kill lands between and inside shard writes.
OPTIONS = ["dataset.image_size=[32,32]", "export.shard_size=2", "export.qa_every=3"]


def make_export_inputs(root: Path) -> dict:
    ckpt = root / "ckpt"
    build_tiny_pipeline(seed=0).save_pretrained(ckpt)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "text.mp4").write_text("not a video\n")
    csv = make_media_csv(root / "data", num_images=2, videos=(CLIP_17, CLIP_100, CLIP_17),
                         extra_rows=["missing.mp4", "text.mp4"])
    return {"ckpt": ckpt, "csv": csv, "root": root}


def export_argv(inputs: dict, save_dir: Path, *options: str) -> list[str]:
    return [str(TINY_ENCODE), "--ckpt-path", str(inputs["ckpt"]), "--data-path", str(inputs["csv"]),
            "--save-dir", str(save_dir), "--cfg-options", *OPTIONS, *options]


def run_export_entry(inputs: dict, save_dir: Path, *options: str) -> int:
    return run_entry(ENCODE_ENTRY, export_argv(inputs, save_dir, *options))


def export_command(inputs: dict, save_dir: Path, *options: str, nproc: int = 1) -> list[str]:
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={nproc}"]
    return [*launch, str(ENCODE_ENTRY), *export_argv(inputs, save_dir, *options)]


def run_export_subprocess(inputs: dict, save_dir: Path, *options: str, nproc: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(export_command(inputs, save_dir, *options, nproc=nproc), cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=child_env())


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
