"""Regenerate the quickstart section of benchmarks/RESULTS.md from a quickstart run's summary.

    python -m examples.quickstart.update_results [demo_runs/quickstart/summary.json]
        [--results benchmarks/RESULTS.md]

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


def render_section(summary: dict) -> str:
    """The section's markdown."""
    seconds = dict(summary["seconds"])
    total = seconds.pop("total")
    parts = ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
    lines = ["From the run's `summary.json` by `python -m examples.quickstart.update_results` (never typed by hand).",
             "",
             f"`bash scripts/quickstart.sh` on {summary['machine']}: **{total / 60:.1f} min** ({parts}).",
             "",
             "Loss of each stage (its own loss; mean over its first vs its last window of steps, whole "
             "epochs where possible):",
             ""]
    losses = []
    for trend in summary["losses"]:
        change = (trend["last"] - trend["first"]) / abs(trend["first"]) if trend["first"] else float("nan")
        losses.append([trend["name"], str(trend["steps"]), f"{trend['first']:.4g}", f"{trend['last']:.4g}",
                       f"{change:+.0%}"])
    lines += _table(["stage (loss)", "steps", "first", "last", "change"], losses)
    metrics = [m for m in METRIC_ORDER if any(m in row["metrics"] for row in summary["results"])]
    rows = [[row["label"]] + [format(row["metrics"][m], METRIC_FORMAT.get(m, ".4f")) if m in row["metrics"]
                              else "-" for m in metrics] for row in summary["results"]]
    lines += ["", f"Held-out reconstruction, scored by eval/vae/eval_common_metric.py: {summary['heldout']}.", ""]
    lines += _table(["reconstruction"] + [m.upper() for m in metrics], rows)
    if summary["notes"]:
        lines += [""] + [f"- {note}" for note in summary["notes"]]
    return "\n".join(lines)


def update_results(summary_path: Path, results_path: Path) -> None:
    try:
        summary = json.loads(Path(summary_path).read_text())
    except (OSError, ValueError) as err:
        raise ResultsUpdateError(f"cannot read the quickstart summary '{summary_path}': {err}") from err
    try:
        section = render_section(summary)
    except (KeyError, TypeError) as err:
        raise ResultsUpdateError(f"'{summary_path}' is not a quickstart summary (missing {err})") from err
    write_section(SECTION, section, Path(results_path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.quickstart.update_results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", nargs="?", default=str(REPO_DIR / "demo_runs" / "quickstart" / "summary.json"))
    parser.add_argument("--results", default=str(REPO_DIR / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    update_results(Path(args.summary), Path(args.results))
    print(f"updated the quickstart section of {args.results} from {args.summary}")
    return 0


if __name__ == "__main__":
    run_cli(main)
