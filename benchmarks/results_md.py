"""Generated sections of benchmarks/RESULTS.md: a script replaces its own section (between its
markers) with what it measured, so no number in that file is typed by hand."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, markdown: str, results: Path = RESULTS) -> None:
    """Replace the section ``name`` of RESULTS.md (between its markers), or append it."""
    begin, end = f"<!-- {name}: begin (generated, do not edit) -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results.write_text(text)
