"""Process memory readings the benchmarks share (Linux /proc): current RSS, and the kernel's
peak-RSS mark (VmHWM), which `reset_peak` sets back to the current RSS so a peak can be taken over
one phase of a run."""

from __future__ import annotations


def rss_mb(field: str = "VmRSS") -> float:
    """`field` of /proc/self/status in MB: VmRSS (now) or VmHWM (the peak since the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> float:
    """Resets the peak-RSS mark (VmHWM) to the current RSS and returns that RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb()


def hwm_mb() -> float:
    return rss_mb("VmHWM")
