"""Time the eval against a baseline that works like the reference eval script, as whole processes
and in one process, side by side, and write the numbers into benchmarks/RESULTS.md.

    python benchmarks/bench_eval.py [--videos 16] [--repeats 5] [--metrics ssim psnr]
                                    [--in-process ssim,psnr ssim,psnr,lpips] [--no-write]

Builds ``--videos`` pairs from the bundled 17-frame 256x256 clip in a temporary folder: the real
video is a lossless copy, the generated one a degraded version (noise, blur, quantisation, shift,
... cycling), both lossless (FFV1). Then evaluates 17 frames at resolution 256 with

- the reference-style loop (what the reference ``eval_common_metric.py`` does): it imports every
  metric's module at start (torch, decord, lpips + torchvision), and each metric is a separate
  pass that decodes every video again (decord, default threads); SSIM filters each frame and
  channel with the 2-D 11x11 float64 Gaussian window (``cv2.filter2D`` as the reference when
  OpenCV is installed, else ``scipy.ndimage.correlate``), PSNR in numpy, LPIPS with batch 1;
  FloLPIPS per video (the reference needs cupy: here our PWC-Net);
- ours: ``python eval/vae/eval_common_metric.py`` (whole process) and ``evaluate_dirs`` (in
  process): one decode per video on all cores, separable SSIM, batched LPIPS / FloLPIPS.

Whole process = the wall time of ``python <script>`` from start to exit, which is what a user
waits for. Other jobs may share the cores: baseline and ours alternate (the order swapped every
repeat) and the medians of ``--repeats`` runs are reported, with every run listed, beside the
CPU time (user + system, all threads) each used, which other jobs disturb much less. Values are
compared per video. FloLPIPS uses random PWC weights when ``network-default.pytorch`` is absent
(timing only). ``--reference-process`` is the baseline's own entry (used by this script).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "assets" / "media" / "city_cc0_256_17f.mp4"
EVAL_ENTRY = REPO / "eval" / "vae" / "eval_common_metric.py"
SECTION = "bench_eval"
NUM_FRAMES, RESOLUTION = 17, 256


def _degrade(frames: np.ndarray, kind: int, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    x = frames.astype(np.float64)
    if kind == 0:
        x = x + rng.normal(0, 6, x.shape)
    elif kind == 1:
        x = ndimage.gaussian_filter(x, sigma=(0, 1.0, 1.0, 0))
    elif kind == 2:
        x = np.round(x / 24) * 24
    elif kind == 3:
        x = np.roll(x, (1, 2), axis=(1, 2))
    else:
        x = ndimage.gaussian_filter(x, sigma=(0, 0.6, 0.6, 0)) + rng.normal(0, 3, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def build_folders(root: str, count: int) -> tuple[str, str]:
    from opensora_vae.data.video_io import read_video_frames, write_video

    frames = read_video_frames(CLIP, range(NUM_FRAMES))
    real, gen = os.path.join(root, "real"), os.path.join(root, "gen")
    os.makedirs(real), os.makedirs(gen)
    rng = np.random.default_rng(0)
    for i in range(count):
        write_video(os.path.join(real, f"v{i:02d}.mkv"), frames, 24, lossless=True)
        write_video(os.path.join(gen, f"v{i:02d}.mkv"), _degrade(frames, i % 5, rng), 24, lossless=True)
    return real, gen


# ----------------------------------------------------------------------------- baseline


def _ssim_filter():
    """The reference's 2-D window filter: (name, function of one float64 image)."""
    from opensora_vae.metrics.ssim import gaussian_window_1d

    g = gaussian_window_1d()
    window = np.outer(g, g)
    try:
        import cv2
    except ImportError:
        from scipy import ndimage

        return "scipy.ndimage.correlate (OpenCV not installed)", lambda img: ndimage.correlate(img, window)
    return f"cv2.filter2D (OpenCV {cv2.__version__})", lambda img: cv2.filter2D(img, -1, window)


def _baseline_load(path: str, device):
    import decord

    from opensora_vae.metrics.protocol import preprocess

    # A fresh decode for every metric, as the reference's DataLoader did, with its indices.
    video = decord.VideoReader(path, ctx=decord.cpu(0))
    indices = np.linspace(0, NUM_FRAMES - 1, NUM_FRAMES, dtype=int)
    return preprocess(video.get_batch(indices).asnumpy(), RESOLUTION, RESOLUTION, device)


def _baseline_ssim_frame(x: np.ndarray, y: np.ndarray, filt) -> float:
    from opensora_vae.metrics.ssim import C1, C2

    values = []
    for c in range(3):
        a, b = x[c].astype(np.float64), y[c].astype(np.float64)
        mu1, mu2 = filt(a)[5:-5, 5:-5], filt(b)[5:-5, 5:-5]
        s1 = filt(a * a)[5:-5, 5:-5] - mu1**2
        s2 = filt(b * b)[5:-5, 5:-5] - mu2**2
        s12 = filt(a * b)[5:-5, 5:-5] - mu1 * mu2
        smap = ((2 * mu1 * mu2 + C1) * (2 * s12 + C2)) / ((mu1**2 + mu2**2 + C1) * (s1 + s2 + C2))
        values.append(smap.mean())
    return float(np.mean(values))


def _baseline_psnr_frame(x: np.ndarray, y: np.ndarray) -> float:
    mse = np.mean((x - y) ** 2)
    return 100.0 if mse < 1e-10 else 20 * math.log10(1 / math.sqrt(mse))


def baseline(real_dir: str, gen_dir: str, metrics: list[str], device, lpips_metric=None,
             flolpips=None) -> dict[str, dict[str, float]]:
    """Per-video means, one pass per metric as the reference does."""
    import torch

    _, filt = _ssim_filter()
    names = sorted(os.listdir(real_dir))
    per_video: dict[str, dict[str, float]] = {n.split(".")[0]: {} for n in names}
    for metric in metrics:
        for name in names:
            real = _baseline_load(os.path.join(real_dir, name), device)
            fake = _baseline_load(os.path.join(gen_dir, name), device)
            if metric == "ssim":
                vals = [_baseline_ssim_frame(r, f, filt) for r, f in zip(real.cpu().numpy(), fake.cpu().numpy())]
            elif metric == "psnr":
                vals = [_baseline_psnr_frame(r, f) for r, f in zip(real.cpu().numpy(), fake.cpu().numpy())]
            elif metric == "lpips":
                with torch.no_grad():
                    vals = [lpips_metric.model(r[None] * 2 - 1, f[None] * 2 - 1).mean().item()
                            for r, f in zip(real, fake)]
            else:
                vals = flolpips.video(real, fake, batch_size=NUM_FRAMES).tolist()
            per_video[name.split(".")[0]][metric] = float(np.mean(vals))
    return per_video


def _networks(metrics: list[str]):
    """LPIPS (lpips AlexNet v0.1, spatial, as the reference) and FloLPIPS; random weights where
    absent. The baseline calls the lpips network itself, frame by frame."""
    import torch

    from opensora_vae.lpips import build_lpips, find_backbone
    from opensora_vae.metrics.lpips_metric import LPIPSMetric
    from opensora_vae.metrics.pwcnet import build_pwcnet

    random_ok = find_backbone("alex") is None
    torch.manual_seed(0)
    lpips_metric = LPIPSMetric(allow_random_backbone=random_ok) if "lpips" in metrics else None
    flolpips = None
    if "flolpips" in metrics:
        from opensora_vae.metrics.flolpips import FloLPIPS

        flolpips = FloLPIPS(build_lpips("alex", allow_random_backbone=random_ok), build_pwcnet(allow_random=True))
    return lpips_metric, flolpips, random_ok


def reference_process(real_dir: str, gen_dir: str, out: str, metrics: list[str]) -> None:
    """The baseline as a whole process: the reference imports every metric's module at start."""
    import decord  # noqa: F401
    import lpips  # noqa: F401  (imports torchvision)
    import torch

    lpips_metric, flolpips, _ = _networks(metrics)
    per_video = baseline(real_dir, gen_dir, metrics, torch.device("cpu"), lpips_metric, flolpips)
    Path(out).write_text(json.dumps(per_video))


# ----------------------------------------------------------------------------- measurements


def _child_env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": path}


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of a whole process."""
    cpu, start = _cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=_child_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


def whole_process(real: str, gen: str, metrics: list[str], repeats: int, tmp: str) -> dict:
    ref_json, res_dir = os.path.join(tmp, "reference.json"), os.path.join(tmp, "ours")
    runs = {
        "reference": [sys.executable, str(Path(__file__).resolve()), "--reference-process", real, gen, ref_json,
                      "--metrics", *metrics],
        "ours": [sys.executable, str(EVAL_ENTRY), "--real_video_dir", real, "--generated_video_dir", gen,
                 "--num_frames", str(NUM_FRAMES), "--resolution", str(RESOLUTION), "--crop_size", str(RESOLUTION),
                 "--metric", *metrics, "--device", "cpu", "--no_progress", "--res_dir", res_dir, "--overwrite"],
    }
    times: dict[str, list[tuple[float, float]]] = {"reference": [], "ours": []}
    for r in range(repeats):
        for name in (("reference", "ours") if r % 2 == 0 else ("ours", "reference")):
            times[name].append(_timed(runs[name]))
            print(f"  whole process, repeat {r + 1}: {name} {times[name][-1][0]:.2f} s "
                  f"(CPU {times[name][-1][1]:.2f} s)", flush=True)
    ours = json.loads(Path(res_dir, f"metric_{NUM_FRAMES}f_{RESOLUTION}res.json").read_text())
    return {"times": times, "diff": _max_diff(ours["per_video"], json.loads(Path(ref_json).read_text()), metrics)}


def in_process(real: str, gen: str, metrics: list[str], repeats: int) -> dict:
    import torch

    from opensora_vae.metrics import EvalSettings, MetricSuite, evaluate_dirs

    lpips_metric, flolpips, random_ok = _networks(metrics)
    settings = EvalSettings(metrics=tuple(metrics), num_frames=NUM_FRAMES, resolution=RESOLUTION,
                            crop_size=RESOLUTION, batch_size=2, device="cpu", bootstrap=0)
    suite = MetricSuite(settings, lpips_metric=lpips_metric, flolpips=flolpips)
    times: dict[str, list[tuple[float, float]]] = {"reference": [], "ours": []}
    for r in range(repeats):
        for name in (("reference", "ours") if r % 2 == 0 else ("ours", "reference")):
            cpu, start = _cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
            if name == "reference":
                ref = baseline(real, gen, suite.metrics, torch.device("cpu"), lpips_metric, flolpips)
            else:
                ours = evaluate_dirs(real, gen, settings, suite=suite, progress=False)
            times[name].append((time.perf_counter() - start, _cpu_seconds(resource.RUSAGE_SELF) - cpu))
            print(f"  in process {','.join(metrics)}, repeat {r + 1}: {name} {times[name][-1][0]:.2f} s "
                  f"(CPU {times[name][-1][1]:.2f} s)", flush=True)
    return {"times": times, "diff": _max_diff(ours["per_video"], ref, suite.metrics), "random": random_ok}


def where_time_goes(real: str, gen: str, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of the parts of an SSIM/PSNR eval process: the interpreter, importing torch,
    importing the eval (torch and everything else it loads), the whole process with 1 and with 2
    processes (torchrun, gloo), and, in one process, the phases of `evaluate_dirs`."""
    eval_args = ["--real_video_dir", real, "--generated_video_dir", gen, "--num_frames", str(NUM_FRAMES),
                 "--resolution", str(RESOLUTION), "--crop_size", str(RESOLUTION), "--metric", "ssim", "psnr",
                 "--device", "cpu", "--no_progress"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import torch": [sys.executable, "-c", "import torch"],
        "import the eval (opensora_vae.metrics.evaluate)": [sys.executable, "-c",
                                                            "import opensora_vae.metrics.evaluate"],
        "whole eval, 1 process": [sys.executable, str(EVAL_ENTRY), *eval_args],
        "whole eval, 2 processes (torchrun, gloo)": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node=2", str(EVAL_ENTRY), *eval_args],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            times[name].append(_timed(cmd)[0])
    times.update(_phases(real, gen, repeats))
    return times


def _phases(real: str, gen: str, repeats: int) -> dict[str, list[float]]:
    from opensora_vae.metrics import EvalSettings, MetricSuite
    from opensora_vae.metrics.evaluate import _score_pairs, pair_files, plan_fvd
    from opensora_vae.metrics.summary import summarize_results

    out: dict[str, list[float]] = {"in process: settings + pairing": [], "in process: decode + SSIM/PSNR": [],
                                   "in process: summary (bootstrap 1000, per frame, worst)": []}
    for _ in range(repeats):
        start = time.perf_counter()
        settings = EvalSettings(metrics=("ssim", "psnr"), num_frames=NUM_FRAMES, resolution=RESOLUTION,
                                crop_size=RESOLUTION, device="cpu")
        pairs = list(enumerate(pair_files(real, gen)))
        suite = MetricSuite(settings)
        plan_fvd([p for _, p in pairs], settings)
        t1 = time.perf_counter()
        results, _ = _score_pairs(pairs, suite, settings, {}, progress=False)
        t2 = time.perf_counter()
        summarize_results(results, settings)
        t3 = time.perf_counter()
        for name, value in zip(out, (t1 - start, t2 - t1, t3 - t2)):
            out[name].append(value)
    return out


def _max_diff(ours: dict, ref: dict, metrics: list[str]) -> dict[str, float]:
    assert ours.keys() == ref.keys(), (sorted(ours), sorted(ref))
    return {m: max(abs(ours[n][m] - ref[n][m]) for n in ref) for m in metrics}


# ----------------------------------------------------------------------------- report


def _row(label: str, times: dict[str, list[tuple[float, float]]]) -> str:
    (ref, ref_cpu), (ours, ours_cpu) = (
        [statistics.median(t[i] for t in times[name]) for i in (0, 1)] for name in ("reference", "ours"))
    return (f"| {label} | {ref:.2f} s | {ours:.2f} s | **{ours / ref:.2f}** | {ref_cpu:.2f} s | {ours_cpu:.2f} s "
            f"| {ours_cpu / ref_cpu:.2f} |")


def _share(runs: list[tuple[float, float]]) -> float:
    return statistics.median(cpu / wall for wall, cpu in runs)


def _runs(times: dict[str, list[tuple[float, float]]]) -> str:
    return "; ".join(f"{name} " + ", ".join(f"{wall:.2f} ({cpu:.2f})" for wall, cpu in times[name])
                     for name in ("reference", "ours"))


def _load_note(load: tuple) -> str:
    # The 1-minute load average before the first run: above 1, other jobs held at least a core's
    # worth of the machine (the benchmark's own runs raise the "after" value, so it is not used).
    if load[0] > 1.0:
        return "**Other jobs shared this machine's cores**"
    return "No other job was running"


def render(args, whole: dict, inproc: dict[str, dict], load: tuple, filter_name: str,
           breakdown: dict[str, list[float]]) -> str:
    import torch

    cmd = (f"python benchmarks/bench_eval.py --videos {args.videos} --repeats {args.repeats} --metrics "
           f"{' '.join(args.metrics)} --in-process {' '.join(args.in_process)} "
           f"--in-process-repeats {args.in_process_repeats}")
    lines = [
        "## Eval: our runner vs a reference-style baseline", "",
        f"`{cmd}` (generated {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores, "
        f"{platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads).", "",
        f"{args.videos} pairs of lossless (FFV1) 17-frame 256×256 videos (the bundled clip and degraded copies), "
        f"17 frames at resolution 256, device cpu. Ratio = ours / reference-style, medians of interleaved "
        f"repeats (baseline and ours alternate, the order swapped every repeat). {_load_note(load)}: load "
        f"average {load[0]:.1f} before, {load[1]:.1f} after, and our whole eval process got {_share(whole['times']['ours']):.2f} CPU-seconds per wall second (2.0 = both cores); "
        f"CPU time (user + system, all threads) is much less disturbed by other jobs than wall time. Every run "
        f"is listed below the table.", "",
        "| what is timed | reference-style wall | ours wall | **wall ratio** | reference-style CPU | ours CPU "
        "| CPU ratio |", "|---|---|---|---|---|---|---|",
        _row(f"whole process (`python ...` start to exit), {' + '.join(args.metrics)}", whole["times"]),
    ]
    for metrics, result in inproc.items():
        lines.append(_row(f"in process (`evaluate_dirs`), {metrics.replace(',', ' + ')}", result["times"]))
    lines += ["", "Largest per-video difference ours vs reference-style: whole process "
              + ", ".join(f"{m} {v:.1e}" for m, v in whole["diff"].items()) + "; in process "
              + "; ".join(", ".join(f"{m} {v:.1e}" for m, v in r["diff"].items()) for r in inproc.values()) + "."]
    if any(r["random"] for r in inproc.values()):
        lines.append("LPIPS ran with a random AlexNet backbone (weights not installed): timing only.")
    lines += [
        "",
        f"Reference-style = what the reference `eval_common_metric.py` does: imports torch, decord and lpips "
        f"(torchvision) at start, one pass per metric that decodes every video again (decord, default threads), "
        f"SSIM with the 2-D 11×11 float64 Gaussian per frame and channel ({filter_name}), PSNR in numpy, LPIPS "
        f"batch 1. Ours = `eval/vae/eval_common_metric.py` / `evaluate_dirs`: imports only the requested "
        f"metrics' modules, decodes each pair once in a thread pool (one thread per core) that also scores "
        f"SSIM (the separable float64 filter as banded matrix products, one BLAS thread per decode thread) and "
        f"PSNR, and runs LPIPS on batches in the main thread.", "",
        "Every run, wall (CPU) s, by repeat: whole process: " + _runs(whole["times"]) + ".",
    ]
    for metrics, result in inproc.items():
        lines.append(f"In process {metrics}: " + _runs(result["times"]) + ".")
    lines += ["", "### Where an SSIM/PSNR eval process spends its time", "",
              f"Medians of {args.repeats} runs (wall seconds, the same {args.videos} pairs; the import rows are "
              f"separate processes that only import).", "", "| part | wall | runs |", "|---|---|---|"]
    for name, runs in breakdown.items():
        lines.append(f"| {name} | {statistics.median(runs):.2f} s | {', '.join(f'{t:.2f}' for t in runs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="whole-process runs of each")
    parser.add_argument("--metrics", nargs="+", default=["ssim", "psnr"], help="metrics of the whole-process runs")
    parser.add_argument("--in-process", nargs="*", default=["ssim,psnr", "ssim,psnr,lpips"],
                        help="comma-separated metric sets timed in this process")
    parser.add_argument("--in-process-repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    parser.add_argument("--reference-process", nargs=3, metavar=("REAL", "GEN", "OUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_process:
        reference_process(*args.reference_process, args.metrics)
        return
    sys.path.insert(0, str(REPO))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        real, gen = build_folders(tmp, args.videos)
        whole = whole_process(real, gen, args.metrics, args.repeats, tmp)
        inproc = {m: in_process(real, gen, m.split(","), args.in_process_repeats) for m in args.in_process}
        breakdown = where_time_goes(real, gen, args.repeats)
    section = render(args, whole, inproc, (load_before, os.getloadavg()[0]), _ssim_filter()[0], breakdown)
    print(section)
    if not args.no_write:
        from results_md import write_section  # the one RESULTS.md section writer

        write_section(SECTION, section)
        print("\nwritten to benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
