"""The quickstart: sample data → stage 0 → stages 1, 2, 3 → inference → eval → summary.

Every stage after stage 0 runs the project's real entry scripts as subprocesses
(`scripts/train_vae.py`, `scripts/inference_vae.py`, `eval/vae/eval_common_metric.py`), so the
demo exercises exactly what a user runs; this module only wires their inputs and outputs.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opensora_vae.config import load_config
from opensora_vae.lpips import find_backbone
from opensora_vae.metrics.pwcnet import PWC_FILENAME, PWC_URL, PWC_WEIGHTS_ENV, default_pwc_weights_path
from .contact_sheet import write_contact_sheet
from .results import (LossTrend, ResultRow, format_loss_trends, format_results_table, loss_trend,
                      read_metrics_json, read_tensorboard_scalars)
from .sample_data import build_sample_data

REPO_DIR = Path(__file__).resolve().parents[2]
TINY_CONFIGS = {k: REPO_DIR / "configs" / "vae" / "train" / "tiny" / f"stage{k}.py" for k in (1, 2, 3)}
INFERENCE_CONFIG = REPO_DIR / "configs" / "vae" / "inference" / "tiny.py"
TRAIN_SCRIPT = REPO_DIR / "scripts" / "train_vae.py"
INFERENCE_SCRIPT = REPO_DIR / "scripts" / "inference_vae.py"
EVAL_SCRIPT = REPO_DIR / "eval" / "vae" / "eval_common_metric.py"
# How a real stage 1 gets a pretrained spatial VAE (train_vae.py has no flag of its own for it).
STAGE1_SPATIAL_HINT = ("scripts/train_vae.py --cfg-options model.spatial.from_pretrained=DIR_OR_HUB_ID, or "
                       "--ckpt-path of a pipeline checkpoint; this demo: python -m examples.quickstart --spatial-vae")
CONTACT_SHEET = "contact_sheet.png"
MARKER = ".quickstart_run"  # only folders carrying it are ever deleted by a new run


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


@dataclass
class DemoSettings:
    out_dir: Path = REPO_DIR / "demo_runs" / "quickstart"
    spatial_vae: str | None = None  # pretrained AutoencoderKL (dir or hub id): skips stage 0
    clip_size: int = 64
    stage0_steps: int = 500
    stage0_batch_size: int = 8
    stage0_lr: float = 2e-3
    # Whole epochs of the 22-sample training CSV (22, 6 and 5 epochs), so the loss windows of
    # the summary compare the same samples. The lrs are far above the recipe's 1e-5: minutes,
    # not days, of training (stage 3 is lower: it fine-tunes everything end to end).
    steps: dict[int, int] = field(default_factory=lambda: {1: 484, 2: 132, 3: 110})
    lrs: dict[int, float] = field(default_factory=lambda: {1: 2e-3, 2: 1e-3, 3: 3e-4})
    eval_frames: int = 17  # the tiny inference config's clip length
    seed: int = 42
    python: str = sys.executable


@dataclass
class DemoSummary:
    """Written to `<out_dir>/summary.json`; `update_results.py` turns it into benchmarks/RESULTS.md."""

    out_dir: str
    data: str
    seconds: dict[str, float]  # per part, and "total"
    losses: list[dict]  # LossTrend fields per stage: name, steps, window, first, last, terms
    results: list[dict]  # ResultRow fields per evaluated reconstruction: label, metrics
    notes: list[str]
    videos: dict[str, str]
    tensorboard: list[str]
    heldout: str  # what the held-out evaluation saw
    machine: str
    contact_sheet: str = ""  # PNG: held-out frames, real | spatial | full pipeline per stage
    # What the numbers depend on besides the settings (update_results compares runs by them).
    commit: str = ""
    cpu: str = ""
    threads: int = 0


def _banner(text: str, start: float) -> None:
    print(f"\n=== [{time.perf_counter() - start:6.0f} s] {text}", flush=True)


def _run(cmd: list[str], what: str, log_hint: str | None = None) -> None:
    """Runs an entry script with this terminal (its progress bars and logs show live)."""
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.run([str(c) for c in cmd], cwd=REPO_DIR, env=env).returncode
    if code != 0:
        hint = f"; see {log_hint}" if log_hint else ""
        raise DemoError(f"{what} failed (exit code {code}){hint}")


def prepare_out_dir(out_dir: Path) -> None:
    """A fresh run folder: an earlier quickstart run there is removed, anything else refused."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).is_file():
            raise DemoError(f"{out_dir} exists and is not a quickstart run folder: choose another --out-dir")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by the quickstart (examples/quickstart); the next run deletes this folder\n")


def latest_step_dir(outputs: Path) -> Path:
    steps = sorted(p for p in outputs.glob("step_*") if (p / "model" / "config.json").is_file())
    if not steps:
        raise DemoError(f"no checkpoint step_XXXXXXXXX/model under {outputs}")
    return steps[-1]


def train_stage(stage: int, config: Path, data_csv: Path, outputs: Path, ckpt: Path, steps: int, lr: float,
                settings: DemoSettings, extra_options: list[str]) -> Path:
    log_every = max(1, steps // 6)
    cmd = [settings.python, TRAIN_SCRIPT, config, "--data-path", data_csv, "--outputs", outputs,
           "--ckpt-path", ckpt, "--lr", repr(lr), "--seed", str(settings.seed),
           # One checkpoint at the end (the trainer always saves the last step).
           "--cfg-options", f"max_steps={steps}", "ckpt_every=0", f"log_every={log_every}", *extra_options]
    _run(cmd, f"stage {stage} training", log_hint=str(outputs / "train.log"))
    return latest_step_dir(outputs)


def reconstruct(ckpt: Path, data_csv: Path, save_dir: Path, settings: DemoSettings) -> dict[str, Path]:
    cmd = [settings.python, INFERENCE_SCRIPT, INFERENCE_CONFIG, "--ckpt-path", ckpt, "--data-path", data_csv,
           "--save-dir", save_dir, "--seed", str(settings.seed), "--cfg-options",
           f"dataset.num_frames={settings.eval_frames}",
           f"dataset.image_size=({settings.clip_size},{settings.clip_size})",
           # Lossless files: the eval then scores the model, not H.264 on 64-pixel frames.
           "lossless=True", "overwrite=True"]
    _run(cmd, f"inference with {ckpt}")
    return {kind: Path(f"{save_dir}_{kind}") for kind in ("ori", "rec", "spatial")}


def evaluate(real_dir: Path, generated_dir: Path, res_dir: Path, metrics: list[str], settings: DemoSettings,
             pwc_weights: Path | None) -> dict[str, float]:
    size = str(settings.clip_size)
    cmd = [settings.python, EVAL_SCRIPT, "--real_video_dir", real_dir, "--generated_video_dir", generated_dir,
           "--device", "cpu", "--num_frames", str(settings.eval_frames), "--resolution", size,
           "--crop_size", size, "--metric", *metrics, "--res_dir", res_dir]
    if pwc_weights is not None:
        cmd += ["--pwc_weights", pwc_weights]
    _run(cmd, f"eval of {generated_dir}")
    return read_metrics_json(res_dir / f"metric_{settings.eval_frames}f_{size}res.json")


def available_metrics() -> tuple[list[str], Path | None, list[str]]:
    """Metrics whose weights are installed, the PWC-Net file if any, and notes on the rest."""
    metrics, notes = ["psnr", "ssim"], []
    if find_backbone("alex") is not None:
        metrics.append("lpips")
    else:
        notes.append("LPIPS not computed: the AlexNet backbone is missing; run "
                     "`python tools/install_weights.py` (bash scripts/setup_env.sh does).")
    pwc = default_pwc_weights_path()
    if pwc.is_file() and "lpips" in metrics:
        metrics.append("flolpips")
        return metrics, pwc, notes
    notes.append(f"FloLPIPS not computed: PWC-Net weights cannot be downloaded here; get {PWC_URL} "
                 f"and put it at {pwc} (or set ${PWC_WEIGHTS_ENV} to the {PWC_FILENAME} file), then rerun.")
    return metrics, None, notes


def _check_repo() -> None:
    missing = [p for p in (*TINY_CONFIGS.values(), INFERENCE_CONFIG, TRAIN_SCRIPT, INFERENCE_SCRIPT, EVAL_SCRIPT)
               if not p.is_file()]
    if missing:
        raise DemoError("the quickstart runs from a checkout of the repository (pip install -e .); missing: "
                        + ", ".join(str(p) for p in missing))


def run_quickstart(settings: DemoSettings) -> DemoSummary:
    from .stage0 import run_stage0  # torch/diffusers: imported once the cheap checks passed

    _check_repo()
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(settings.out_dir).resolve()
    prepare_out_dir(out)
    notes: list[str] = []

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 1)
        return now

    _banner("sample data from the bundled CC0 clip (assets/media/)", start)
    t = time.perf_counter()
    data = build_sample_data(out / "data", clip_size=settings.clip_size)
    print(data.describe())
    t = lap("data", t)

    model_cfg = load_config(TINY_CONFIGS[1]).model.to_dict()
    configs = dict(TINY_CONFIGS)
    trends: list[LossTrend] = []
    rows: list[ResultRow] = []
    if settings.spatial_vae is None:
        _banner("stage 0 (demo only): no pretrained SD-VAE offline, so the tiny spatial VAE is trained "
                f"for {settings.stage0_steps} steps on frames of the training clips", start)
        s0 = run_stage0(model_cfg, data.train_csv, data.heldout_csv, out / "stage0", steps=settings.stage0_steps,
                        batch_size=settings.stage0_batch_size, lr=settings.stage0_lr, seed=settings.seed)
        trends.append(loss_trend("stage 0 spatial VAE (L1 + KL)", list(enumerate(s0.losses, start=1))))
        print(f"stage 0: loss {trends[-1].first:.4g} -> {trends[-1].last:.4g}; held-out frame PSNR "
              f"{s0.heldout_psnr_before:.2f} dB (random) -> {s0.heldout_psnr:.2f} dB "
              f"({s0.num_heldout_frames} frames); saved {s0.checkpoint}")
        notes.append("Stage 0 (demo only) trained the tiny spatial VAE from scratch because no pretrained "
                     "SD-VAE is available offline; real runs start from a pretrained SD-VAE: "
                     f"{STAGE1_SPATIAL_HINT}.")
        ckpt = s0.checkpoint
    else:
        from .pretrained_spatial import save_pipeline_with_spatial, write_stage_configs

        _banner(f"pretrained spatial VAE {settings.spatial_vae} (stage 0 skipped)", start)
        ckpt, spatial_config = save_pipeline_with_spatial(model_cfg, settings.spatial_vae, out / "stage0",
                                                          seed=settings.seed)
        configs = write_stage_configs(TINY_CONFIGS, spatial_config, out / "configs")
    t = lap("stage0", t)

    extra: dict[int, list[str]] = {k: [] for k in (1, 2, 3)}
    if find_backbone("vgg") is None:
        extra[3] = ["perceptual_loss_weight=0.0"]
        notes.append("Stage 3 ran WITHOUT its LPIPS(VGG) term: the VGG16 backbone is missing "
                     "(run `python tools/install_weights.py`).")
        print("note: " + notes[-1])
    metrics, pwc_weights, metric_notes = available_metrics()
    notes.extend(metric_notes)

    epoch_steps = data.num_train_videos + data.num_train_images  # batch 1, one process
    stage_ckpts: dict[int, Path] = {}
    for stage in (1, 2, 3):
        steps, lr = settings.steps[stage], settings.lrs[stage]
        _banner(f"stage {stage}: {steps} steps, lr {lr:g}, from {ckpt}", start)
        outputs = out / f"stage{stage}"
        step_dir = train_stage(stage, configs[stage], data.train_csv, outputs, ckpt, steps, lr, settings, extra[stage])
        curves = read_tensorboard_scalars(outputs / "tensorboard")
        total = curves.pop("loss/loss")
        terms = {tag.split("/", 1)[1]: points for tag, points in curves.items()}
        trends.append(loss_trend(f"stage {stage} ({_stage_loss_name(stage)})", total,
                                 window=epoch_window(steps, epoch_steps), terms=terms))
        print(format_loss_trends(trends[-1:]))
        stage_ckpts[stage] = step_dir
        ckpt = step_dir / "model"
        t = lap(f"stage{stage}", t)

    _banner(f"reconstructing the {data.num_heldout_videos} held-out clips and evaluating "
            f"({', '.join(metrics)})", start)
    videos: dict[str, str] = {}
    source = "stage 0" if settings.spatial_vae is None else "pretrained"
    sheet_columns: dict[str, Path] = {}
    for stage in (1, 2, 3):
        dirs = reconstruct(stage_ckpts[stage], data.heldout_csv, out / "samples" / f"stage{stage}", settings)
        if stage == 1:
            sheet_columns["real\n(held-out)"] = dirs["ori"]
            sheet_columns[f"spatial VAE\nonly ({source})"] = dirs["spatial"]
        sheet_columns[f"full pipeline\nafter stage {stage}"] = dirs["rec"]
        if stage == 1:
            # Stage 1 freezes the spatial VAE: its spatial-only output is stage 0's VAE.
            rows.append(ResultRow(f"spatial VAE only, {source} (frozen in stage 1)",
                                  evaluate(dirs["ori"], dirs["spatial"], out / "eval" / "stage1_spatial",
                                           metrics, settings, pwc_weights)))
        label = {1: "full pipeline after stage 1", 2: "full pipeline after stage 2 (= start of stage 3)",
                 3: "full pipeline after stage 3"}[stage]
        rows.append(ResultRow(label, evaluate(dirs["ori"], dirs["rec"], out / "eval" / f"stage{stage}_rec",
                                              metrics, settings, pwc_weights)))
        if stage == 3:
            rows.append(ResultRow("spatial VAE only after stage 3",
                                  evaluate(dirs["ori"], dirs["spatial"], out / "eval" / "stage3_spatial",
                                           metrics, settings, pwc_weights)))
            videos = {kind: str(path) for kind, path in dirs.items()}
    sheet = write_contact_sheet(sheet_columns, out / CONTACT_SHEET)
    lap("inference+eval", t)
    seconds["total"] = round(time.perf_counter() - start, 1)

    h0, h1 = data.heldout_frame_range
    summary = DemoSummary(
        out_dir=str(out), data=data.describe(), seconds=seconds, losses=[asdict(tr) for tr in trends],
        results=[asdict(r) for r in rows], notes=notes, videos=videos,
        tensorboard=[str(out / f"stage{k}" / "tensorboard") for k in (0, 1, 2, 3)
                     if (out / f"stage{k}" / "tensorboard").is_dir()],
        contact_sheet=str(sheet),
        heldout=(f"source frames {h0}-{h1 - 1} (never trained on), first {settings.eval_frames} frames, "
                 f"{settings.clip_size}x{settings.clip_size}"),
        machine=machine_description(), commit=git_commit(), cpu=cpu_model(), threads=_torch_threads())
    (out / "summary.json").write_text(json.dumps(summary.__dict__, indent=2) + "\n")
    print_summary(summary, trends, rows, metrics)
    return summary


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows) and the vector
    width of the kernels torch picked on it (AVX2, AVX512; ATEN_CPU_CAPABILITY can lower it)."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()} kernels"


def git_commit() -> str:
    """The checkout's commit (`+dirty` with uncommitted changes to tracked files), or ''."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def machine_description() -> str:
    """What the trajectory depends on besides the code: CPU model (its kernels' vector width)
    and torch's thread count (the order of floating-point sums)."""
    import torch

    return (f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end")


def epoch_window(steps: int, epoch_steps: int) -> int:
    """Whole epochs, about a quarter of the run: the first and the last window then hold the
    same samples (the sampler visits each once per epoch)."""
    epochs = steps // epoch_steps
    if epochs < 2:
        return max(1, steps // 5)
    return epoch_steps * max(1, epochs // 4)


def _stage_loss_name(stage: int) -> str:
    return {1: "latent L1 + identity", 2: "latent L1", 3: "pixel L1 + LPIPS + KL"}[stage]


def print_summary(summary: DemoSummary, trends: list[LossTrend], rows: list[ResultRow], metrics: list[str]) -> None:
    print("\n" + "=" * 100)
    print("Loss of each stage (its own loss; mean over its first vs its last steps, whole epochs where possible):")
    print(format_loss_trends(trends))
    print(f"\nHeld-out reconstruction: {summary.heldout}, eval/vae/eval_common_metric.py:")
    print(format_results_table(rows, metrics))
    for note in summary.notes:
        print("note: " + note)
    print(f"\nvideos (input | full pipeline | spatial only): {summary.videos.get('ori')}  "
          f"{summary.videos.get('rec')}  {summary.videos.get('spatial')}")
    print(f"TensorBoard logs (loss curves, preview images): tensorboard --logdir {summary.out_dir}")
    print(f"contact sheet (held-out frames: real | spatial VAE only | full pipeline after each stage): "
          f"{summary.contact_sheet}")
    print(f"summary: {summary.out_dir}/summary.json (benchmarks/RESULTS.md from it: "
          f"python -m examples.quickstart.update_results {summary.out_dir}/summary.json)")
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in summary.seconds.items() if k != "total")
    print(f"total wall time: {summary.seconds['total'] / 60:.1f} min ({parts})")
