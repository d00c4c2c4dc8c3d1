"""Process memory readings the benchmarks share (Linux /proc): a process's RSS and USS (its
private pages), its child processes, and the kernel's peak-RSS mark (VmHWM), which `reset_peak`
sets back to the current RSS so a peak can be taken over one phase of a run."""

from __future__ import annotations

import os
from pathlib import Path


def _kb_fields(path: str, names: tuple[str, ...]) -> float | None:
    """Sum of the `names` fields (kB) of a /proc status-like file, in MB; None when the process
    has exited (the file is gone) or is exiting (a zombie's files lack the fields): samplers
    of other processes race with their exit."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in names:
            found[key] = int(value.split()[0])
    return sum(found.values()) / 1024 if len(found) == len(names) else None


def rss_mb(pid: int | None = None, field: str = "VmRSS") -> float | None:
    """`field` of /proc/PID/status in MB (this process when `pid` is None): VmRSS (now) or VmHWM
    (the peak since the last reset); None if that process is gone."""
    return _kb_fields(f"/proc/{'self' if pid is None else pid}/status", (field,))


def uss_mb(pid: int | None = None) -> float | None:
    """USS in MB: Private_Clean + Private_Dirty of /proc/PID/smaps_rollup (a forked worker's
    RSS also counts the pages it shares with its parent); None if that process is gone."""
    return _kb_fields(f"/proc/{'self' if pid is None else pid}/smaps_rollup", ("Private_Clean", "Private_Dirty"))


def child_pids(pid: int | None = None) -> list[int]:
    """The ids of the live children of `pid` (this process when None), sorted."""
    parent, found = os.getpid() if pid is None else pid, []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:  # field 4 of stat (after the parenthesised name, which may hold spaces) is the parent id
            if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue  # exited while listing
    return sorted(found)


def reset_peak() -> float:
    """Resets the peak-RSS mark (VmHWM) to the current RSS and returns that RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb()


def hwm_mb() -> float:
    return rss_mb(field="VmHWM")
