"""What the benchmark reads of a process tree from ``/proc``: CPU time, RSS, peak RSS, PSS (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``--workers`` children), from the ``ppid`` of every ``/proc/N/stat``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (utime + stime of ``/proc/N/stat``)."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_kib(pids: list[int]) -> int:
    """Summed VmRSS of ``pids`` (pages shared between workers counted once per process)."""
    return sum(status_kib(pid, "VmRSS") for pid in pids)


def pss_kib(pids: list[int]) -> int:
    """Summed proportional set size (shared pages split between the processes sharing them)."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def reset_peaks(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS for each process (``clear_refs`` 5, Linux 4.0+)."""
    try:
        for pid in pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_growth_kib(pids: list[int], before: dict[int, int]) -> int:
    """Summed ``VmHWM - RSS before`` over ``pids`` (``before``: pid -> VmRSS KiB when the peaks were reset)."""
    return sum(max(0, status_kib(pid, "VmHWM") - before[pid]) for pid in pids)


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from ``/proc/stat``: time the hypervisor gave to others while this
    machine wanted to run (a VM shares its host's cores), and all time."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])
