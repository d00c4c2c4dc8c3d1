"""Model benchmarks on this machine (CPU): activation checkpointing, long-video memory, and the
training-step options (torch.compile, channels_last_3d, fused AdamW) against eager.

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to it alone;
"peak above baseline" = peak RSS during the measured call minus RSS just before it.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_model.py                 # everything
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_model.py --step-options  # only the options;
        # rewrites the "Training-step options" section of benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

from memory import hwm_mb, reset_peak, rss_mb  # benchmarks/memory.py

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_train_step(checkpointing: bool, filters: int, frames: int, size: int, repeats: int) -> dict:
    import torch

    from opensora_vae.config import model_defaults
    from opensora_vae.models import TemporalVAE

    torch.manual_seed(0)
    model = TemporalVAE(**{**model_defaults()["temporal"], "filters": filters}).train()
    model.set_gradient_checkpointing(checkpointing)
    x = torch.randn(1, 4, frames, size, size)

    def step():
        recon, post, _ = model(x)
        loss = (recon - x).abs().mean() + 1e-6 * post.kl().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    # Memory: the first full-size step, measured from the RSS before it (a warm-up at full size
    # would leave freed blocks in malloc's arenas and hide the activation peak).
    base = rss_mb()
    step()
    peak = _peak_mb() - base
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    dt = (time.perf_counter() - t0) / repeats
    return {"step_s": dt, "peak_above_baseline_mb": peak}


def run_reconstruct(frames: int, chunked: bool, size: int, filters: int) -> dict:
    import torch

    from conftest_free import tiny_pipeline_for_bench

    pipe = tiny_pipeline_for_bench(filters)
    if not chunked:
        pipe.micro_frame_size = None  # the whole clip at once (reference with micro_frame_size=None)
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    io_mb = 2 * x.numel() * 4 / 2**20  # input + output tensors
    base = rss_mb()
    t0 = time.perf_counter()
    with torch.no_grad():
        if chunked:
            out = pipe.reconstruct(x).rec
        else:
            out = pipe.decode(pipe.encode(x, sample=False), num_frames=frames)
    dt = time.perf_counter() - t0
    assert out.shape == x.shape
    peak = _peak_mb() - base
    return {"s": dt, "peak_above_baseline_mb": peak, "io_mb": io_mb, "work_mb": peak - io_mb / 2}


STEP_OPTIONS = ("eager", "channels_last_3d", "compile")


def run_step_option(net: str, option: str, repeats: int, out_file: str, filters: int = 32,
                    res_blocks: int = 2, frames: int = 9, size: int = 16) -> dict:
    """One training step's forward + backward (+ fused or foreach AdamW for net="adamw") with an
    option; the first step's output and gradients go to `out_file` for the numerics check.

    net: "temporal" (the temporal VAE: the stage-1 step), "lpips" (LPIPS(VGG) on the
    reconstruction: what stage 3 adds), "adamw" (the optimizer step over the temporal VAE's
    parameters; option "eager" = foreach, "fused" = fused)."""
    import torch

    from opensora_vae.config import model_defaults
    from opensora_vae.losses import build_perceptual
    from opensora_vae.models import TemporalVAE

    torch.manual_seed(0)
    if net == "lpips":
        model = build_perceptual(allow_random_backbone=True).eval().requires_grad_(False)
        x = torch.rand(frames, 3, size, size) * 2 - 1
        x_rec = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
        inputs, grads_of = (x, x_rec), [x_rec]

        def loss_fn():
            return model(*inputs).sum()
    else:
        model = TemporalVAE(**{**model_defaults()["temporal"], "filters": filters, "num_res_blocks": res_blocks,
                               "num_groups": 8}).train()
        x = torch.randn(1, 4, frames, size, size)
        inputs, grads_of = (x,), list(model.parameters())

        def loss_fn():
            recon, post, _ = model(x, sample=False)
            return (recon - x).abs().mean() + 1e-6 * post.kl().mean()
    if option == "channels_last_3d":
        model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        inputs = (x,) + inputs[1:]
    elif option == "compile":
        model.compile()  # inductor: the default backend of compile=True
    optimizer = None
    if net == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=option == "fused",
                                      foreach=None if option == "fused" else True)

    def step():
        loss = loss_fn()
        loss.backward()
        if optimizer is not None:
            t = time.perf_counter()
            optimizer.step()
            step.opt_s = time.perf_counter() - t
        return loss

    t0 = time.perf_counter()
    loss = step()
    first_s = time.perf_counter() - t0  # includes compilation
    torch.save({"loss": loss.detach(), "grads": [g.grad.detach().clone() for g in grads_of],
                "params": [p.detach().clone() for p in model.parameters()] if optimizer else []}, out_file)
    for g in grads_of:
        g.grad = None
    base = reset_peak()
    times, opt_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        opt_times.append(getattr(step, "opt_s", 0.0))
        for g in grads_of:
            g.grad = None
    peak = max(0.0, hwm_mb() - base)  # 0: the timed steps reused memory freed by the warm-up
    times.sort()
    return {"step_s": times[len(times) // 2], "optimizer_s": sorted(opt_times)[len(opt_times) // 2],
            "first_step_s": first_s, "peak_above_baseline_mb": peak}


def _max_diff(a_file: str, b_file: str) -> float:
    import torch

    a, b = torch.load(a_file), torch.load(b_file)
    pairs = [(a["loss"], b["loss"])] + list(zip(a["grads"], b["grads"])) + list(zip(a["params"], b["params"]))
    # Relative to each tensor's scale, so the 1e-5 bound means the same for losses and gradients.
    return max(((x.float() - y.float()).abs().max() / x.float().abs().max().clamp_min(1e-12)).item()
               for x, y in pairs)


def step_options(repeats: int, timeout_s: int) -> list[dict]:
    import tempfile

    cases = [("temporal", o) for o in STEP_OPTIONS] + [("lpips", o) for o in STEP_OPTIONS] + \
            [("adamw", "eager"), ("adamw", "fused")]
    sizes = {"temporal": dict(filters=16, res_blocks=1, frames=9, size=16),
             "lpips": dict(frames=2, size=64), "adamw": dict(filters=16, res_blocks=1, frames=9, size=16)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net, option in cases:
            out_file = os.path.join(tmp, f"{net}_{option}.pt")
            row = {"net": net, "option": option, **sizes[net]}
            try:
                row.update(_child("run_step_option", dict(net=net, option=option, repeats=repeats,
                                                          out_file=out_file, **sizes[net]), timeout=timeout_s))
                row["max_rel_diff_vs_eager"] = _max_diff(os.path.join(tmp, f"{net}_eager.pt"), out_file)
            except subprocess.TimeoutExpired:
                row["error"] = f"timed out after {timeout_s} s"
            except subprocess.CalledProcessError as err:
                row["error"] = (err.stderr or "").strip().splitlines()[-1][:200] if err.stderr else str(err)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _step_options_markdown(rows: list[dict], repeats: int, header: str) -> str:
    eager = {r["net"]: r for r in rows if r["option"] == "eager" and "error" not in r}
    what = {"temporal": "temporal VAE fwd+bwd (filters {filters}, {res_blocks} res block(s), 8 groups, {frames}×{size}² latents)",
            "lpips": "LPIPS(VGG) fwd+bwd ({frames} frames, {size}²)",
            "adamw": "AdamW step over the temporal VAE's parameters (filters {filters})"}
    lines = [header, "",
             f"`OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_model.py --step-options` — each case in a fresh "
             f"process, median of {repeats} steps after one warm-up step (the first step, which includes "
             "compilation, is listed separately); peak = peak RSS (VmHWM, reset after the warm-up) minus RSS "
             "before the timed steps; numerics = max |option − eager| / max |eager| over the first step's loss, "
             "gradients (and, for AdamW, updated weights), same weights and inputs.", "",
             "| step | option | time (median) | ratio vs eager | first step | peak above baseline | numerics vs eager |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = what[r["net"]].format(**r)
        if "error" in r:
            lines.append(f"| {name} | {r['option']} | {r['error']} | | | | |")
            continue
        key = "optimizer_s" if r["net"] == "adamw" else "step_s"
        base = eager.get(r["net"])
        ratio = f"{r[key] / base[key]:.2f}×" if base else "n/a"
        lines.append(f"| {name} | {r['option']} | {r[key] * 1e3:.1f} ms | {ratio} | {r['first_step_s']:.1f} s | "
                     f"{r['peak_above_baseline_mb']:.0f} MB | {r['max_rel_diff_vs_eager']:.1e} |")
    return "\n".join(lines) + "\n"


RESULTS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
SECTION_BEGIN = "<!-- bench_model.py --step-options: generated, do not edit by hand -->"
SECTION_END = "<!-- end bench_model.py --step-options -->"


def write_results_section(text: str, path: str = RESULTS_MD) -> None:
    block = f"{SECTION_BEGIN}\n{text}{SECTION_END}\n"
    old = open(path).read() if os.path.exists(path) else ""
    pattern = re.compile(re.escape(SECTION_BEGIN) + ".*?" + re.escape(SECTION_END) + "\n?", re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(new)


def _child(kind: str, kwargs: dict, timeout: float | None = None) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import bench_model as b; "
            f"print(json.dumps(b.{kind}(**{kwargs!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _machine() -> str:
    import platform

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, threads {torch.get_num_threads()}")


def main_step_options(repeats: int, timeout_s: int) -> None:
    machine = _machine()
    print(f"machine: {machine}\n\n== training-step options vs eager ==")
    rows = step_options(repeats, timeout_s)
    header = (f"## Training-step options: torch.compile, channels_last_3d, fused AdamW (CPU)\n\n"
              f"Machine: {machine}, measured {time.strftime('%Y-%m-%d')}.")
    text = _step_options_markdown(rows, repeats, header)
    write_results_section(text)
    print("\n" + text + f"\nwrote {RESULTS_MD}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-options", action="store_true", help="only the training-step options section")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per step-option case")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per step-option case (compilation)")
    args = parser.parse_args()
    if args.step_options:
        main_step_options(args.repeats, args.timeout)
        return
    print(f"machine: {_machine()}")
    print("\n== temporal VAE train step (filters=64, 17 frames, 32x32 latents, batch 1) ==")
    res = {c: _child("run_train_step", dict(checkpointing=c, filters=64, frames=17, size=32, repeats=2))
           for c in (False, True)}
    for c, r in res.items():
        print(f"checkpointing={c!s:5}  step {r['step_s']:.2f} s  peak above baseline {r['peak_above_baseline_mb']:.0f} MB")
    print(f"memory ratio (ckpt / no ckpt): {res[True]['peak_above_baseline_mb'] / res[False]['peak_above_baseline_mb']:.2f}; "
          f"time ratio: {res[True]['step_s'] / res[False]['step_s']:.2f}")

    print("\n== encode+decode (tiny spatial VAE, temporal filters=64, 128x128) peak memory ==")
    rows = {}
    for chunked in (True, False):
        for frames in (17, 170):
            r = _child("run_reconstruct", dict(frames=frames, chunked=chunked, size=128, filters=64))
            rows[(chunked, frames)] = r
            print(f"chunked={chunked!s:5} T={frames:4d}  {r['s']:.1f} s  peak above baseline "
                  f"{r['peak_above_baseline_mb']:.0f} MB (of which output {r['io_mb'] / 2:.0f} MB)")
    for chunked in (True, False):
        a, b = rows[(chunked, 17)], rows[(chunked, 170)]
        print(f"chunked={chunked}: working-memory growth 17→170 frames (peak minus output tensor): "
              f"{b['work_mb'] / a['work_mb']:.2f}x; total peak growth {b['peak_above_baseline_mb'] / a['peak_above_baseline_mb']:.2f}x")
    main_step_options(args.repeats, args.timeout)


if __name__ == "__main__":
    main()
