"""A process and its descendants, read from /proc (Linux): peak memory and CPU seconds of the whole tree.

`frugal serve` with uvicorn workers is a tree of processes, so the server's figures are sums over the tree.
Standard library only: benchmarks/load.py imports it and must stay light.
"""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces): [state, ppid, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(pid: int) -> list[int]:
    """pid and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            children.setdefault(int(_stat(entry.name)[1]), []).append(int(entry.name))
        except (OSError, IndexError):  # it exited while we read
            continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def peak_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process plus its descendants' (a sum of peaks: an upper bound)."""
    total = 0
    for current in tree(pid):
        try:
            line = next(x for x in Path(f"/proc/{current}/status").read_text().splitlines() if x.startswith("VmHWM:"))
            total += int(line.split()[1])
        except (OSError, StopIteration):
            continue
    return total / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its live descendants (a difference of two is a window's)."""
    ticks = 0
    for current in tree(pid):
        try:
            fields = _stat(current)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
        except (OSError, IndexError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")
