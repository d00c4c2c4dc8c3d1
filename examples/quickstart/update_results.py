"""Regenerate the quickstart section of benchmarks/RESULTS.md from a quickstart run's summary.

    python -m examples.quickstart.update_results [demo_runs/quickstart/summary.json ...]
        [--results benchmarks/RESULTS.md] [--section quickstart]

The "quickstart" section is replaced (or appended) by `benchmarks/results_md.write_section`,
the one writer of generated RESULTS.md sections; the rest of the file is kept. The numbers
therefore always come from a run (`summary.json` is written by every quickstart), never from typing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from opensora_vae.cli import run_cli  # first: sets the CPU thread policy before torch loads
from opensora_vae.errors import UserError

from benchmarks.results_md import write_section

REPO_DIR = Path(__file__).resolve().parents[2]
SECTION = "quickstart"  # the name of its markers in RESULTS.md
METRIC_ORDER = ("psnr", "ssim", "lpips", "flolpips")
METRIC_FORMAT = {"psnr": ".2f"}  # dB; the others are in [0, 1]


class ResultsUpdateError(UserError):
    """A summary or results file that cannot be used (the message says which)."""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def _machine(summary: dict) -> str:
    """CPU model, threads and commit: what a run's numbers depend on besides its settings."""
    parts = [summary["machine"]]
    if summary.get("commit"):
        parts.append(f"commit {summary['commit']}")
    return ", ".join(parts)


def _cell(values: Sequence[float], fmt: str) -> str:
    """One number, or the range over the runs ("min – max")."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low} – {high}"


def _numbers(summary: dict) -> dict[str, float]:
    """Every number of a run by a stable name: loss windows and held-out metrics."""
    out = {}
    for trend in summary["losses"]:
        out[f"{trend['name']} first"], out[f"{trend['name']} last"] = trend["first"], trend["last"]
    for row in summary["results"]:
        out.update({f"{row['label']} {m}": v for m, v in row["metrics"].items()})
    return out


def _max_relative_difference(a: dict, b: dict) -> float:
    shared = set(a) & set(b)
    return max((abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in shared), default=0.0)


def compare_runs(summaries: Sequence[dict]) -> list[str]:
    """What differs between runs, computed from their summaries: for each pair, whether the code
    (commit) or the machine (CPU model, threads) differs, and whether the numbers are identical."""
    lines = []
    for i, a in enumerate(summaries):
        for b in summaries[i + 1:]:
            same_code = a.get("commit") == b.get("commit")
            same_machine = (a.get("cpu"), a.get("threads")) == (b.get("cpu"), b.get("threads"))
            what = ("same commit and machine" if same_code and same_machine else
                    f"commits {a.get('commit')} vs {b.get('commit')}, same CPU and threads" if same_machine else
                    f"same commit, {a.get('cpu')} / {a.get('threads')} threads vs {b.get('cpu')} / "
                    f"{b.get('threads')} threads" if same_code else "other commit and machine")
            diff = _max_relative_difference(_numbers(a), _numbers(b))
            verdict = "identical numbers" if diff == 0 else f"numbers differ by up to {diff:.1%}"
            lines.append(f"- {what}: {verdict}")
    return lines


def _settings(summary: dict) -> tuple:
    """What makes two runs' numbers comparable row by row: the stages with their step counts,
    the result rows and the held-out clips."""
    return ([(trend["name"], trend["steps"]) for trend in summary["losses"]],
            [row["label"] for row in summary["results"]], summary["heldout"])


def check_same_settings(runs: Sequence[dict]) -> None:
    """Ranges are taken row by row and the steps and held-out clips are the first run's, so a
    run of other settings would be merged silently into ranges over unrelated numbers."""
    first = _settings(runs[0])
    for k, run in enumerate(runs[1:], start=2):
        for what, mine, theirs in zip(("stages and steps", "result rows", "held-out clips"),
                                      _settings(run), first):
            if mine != theirs:
                raise ResultsUpdateError(f"run {k} is not of the same settings as run 1: its {what} are "
                                         f"{mine}, run 1's are {theirs}")


def render_section(summaries: dict | Sequence[dict], intro: str = "") -> str:
    """The section's markdown: one run's numbers, or the range over several runs of the same
    settings (min – max); `intro`: what the runs were for (a sentence, no numbers of its own)."""
    runs = [summaries] if isinstance(summaries, dict) else list(summaries)
    check_same_settings(runs)
    first = runs[0]
    seconds = dict(first["seconds"])
    total = seconds.pop("total")
    parts = ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
    lines = ["From the runs' `summary.json` by `python -m examples.quickstart.update_results` (never typed by hand).",
             ""] + ([intro, ""] if intro else [])
    if len(runs) == 1:
        lines.append(f"`bash scripts/quickstart.sh` on {_machine(first)}: **{total / 60:.1f} min** ({parts}).")
    else:
        lines.append(f"{len(runs)} runs of the same settings; each number is the range over them (min – max):")
        lines += [""] + [f"- {_machine(run)}: {run['seconds']['total'] / 60:.1f} min" for run in runs]
    lines += ["", "Loss of each stage (its own loss; mean over its first vs its last window of steps, whole "
              "epochs where possible):", ""]
    losses = []
    for k, trend in enumerate(first["losses"]):
        trends = [run["losses"][k] for run in runs]
        changes = [(t["last"] - t["first"]) / abs(t["first"]) if t["first"] else float("nan") for t in trends]
        losses.append([trend["name"], str(trend["steps"]), _cell([t["first"] for t in trends], ".4g"),
                       _cell([t["last"] for t in trends], ".4g"), _cell(changes, "+.0%")])
    lines += _table(["stage (loss)", "steps", "first", "last", "change"], losses)
    metrics = [m for m in METRIC_ORDER if any(m in row["metrics"] for row in first["results"])]
    rows = []
    for k, row in enumerate(first["results"]):
        cells = []
        for m in metrics:
            values = [run["results"][k]["metrics"][m] for run in runs if m in run["results"][k]["metrics"]]
            cells.append(_cell(values, METRIC_FORMAT.get(m, ".4f")) if values else "-")
        rows.append([row["label"]] + cells)
    lines += ["", f"Held-out reconstruction, scored by eval/vae/eval_common_metric.py: {first['heldout']}.", ""]
    lines += _table(["reconstruction"] + [m.upper() for m in metrics], rows)
    lines += ["", REPRODUCIBILITY]
    if len(runs) > 1:
        lines += ["", "Between these runs:", ""] + compare_runs(runs)
    if first["notes"]:
        lines += [""] + [f"- {note}" for note in first["notes"]]
    return "\n".join(lines)


# Why numbers differ between machines; the measured comparison is in the runs' list above, or
# from `update_results A/summary.json B/summary.json ...`.
REPRODUCIBILITY = (
    "How far to trust single numbers: the training is deterministic for a given CPU model, thread count "
    "and commit (the seed fixes data order, initial weights and sampling noise), but the float sums inside "
    "the convolutions run in a different order with another vector width (AVX2 vs AVX-512 kernels of "
    "oneDNN/MKL) or another number of threads. The last bits of each step differ, and hundreds of steps at "
    "the demo's high learning rates amplify that, so another CPU (or thread count) gives another "
    "trajectory: read a single run's numbers as one sample of a spread, not as values to reproduce. "
    "Compare runs with `python -m examples.quickstart.update_results RUN1/summary.json RUN2/summary.json`, "
    "which gives the range over the runs and says for each pair whether the commit or the machine differed.")


def update_results(summary_paths: Path | Sequence[Path], results_path: Path, section: str = SECTION,
                   intro: str = "") -> None:
    paths = [summary_paths] if isinstance(summary_paths, (str, Path)) else list(summary_paths)
    summaries = []
    for path in paths:
        try:
            summaries.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise ResultsUpdateError(f"cannot read the quickstart summary '{path}': {err}") from err
    try:
        markdown = render_section(summaries, intro)
    except (KeyError, TypeError, IndexError) as err:
        raise ResultsUpdateError(f"{', '.join(map(str, paths))}: not quickstart summaries of the same "
                                 f"settings (missing {err})") from err
    write_section(section, markdown, Path(results_path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.quickstart.update_results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", nargs="*", default=[str(REPO_DIR / "demo_runs" / "quickstart" / "summary.json")],
                        help="one run's summary.json, or several runs of the same settings (their range is shown)")
    parser.add_argument("--results", default=str(REPO_DIR / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--section", default=SECTION, help="RESULTS.md section to write (its marker name)")
    parser.add_argument("--intro", default="", help="a sentence on what the runs compare (shown first)")
    args = parser.parse_args(argv)
    update_results([Path(p) for p in args.summary], Path(args.results), args.section, args.intro)
    print(f"updated the {args.section} section of {args.results} from {', '.join(args.summary)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
