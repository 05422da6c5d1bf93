"""What every benchmark records next to its numbers: the machine, and how busy it was while it ran.

The benchmarks run on small shared machines, where a number means little without the CPU it ran on and
the load from other processes at the time; `machine()` goes into each results file and each printed header.
Wall-clock throughput on such a machine drifts with the others' load, so the serving benchmarks also read the
CPU time each server process spent (`process_tree_cpu`), which the others' load does not change much.
`t_interval` is the 95% Student-t interval the benchmarks give over seeds or rounds.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["load_average", "machine", "machine_line", "markdown_table", "process_tree_cpu", "t_interval"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _process_label(pid: int) -> str:
    """A BentoML worker's service name (`--service-name X` on its command line), else "supervisor"."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"--service-name" in args:
        position = args.index(b"--service-name") + 1
        if position < len(args):
            return args[position].decode(errors="replace")
    return "supervisor"


def process_tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """{pid: (label, user + system CPU seconds)} of `root` and every process under it, read from /proc/PID/stat;
    the label names the BentoML service a worker runs (`_process_label`). Processes that exit while this reads
    are left out."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(text.split(" ", 1)[0])
        fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    per_second = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in ticks:
            out[pid] = (_process_label(pid), ticks[pid] / per_second)
        todo.extend(children.get(pid, []))
    return out


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (what `uptime` prints), rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """CPU model, logical cores (`nproc`), load averages, Python version."""
    return {"cpu": _cpu_model(), "nproc": os.cpu_count(), "load": load_average(),
            "python": platform.python_version()}


def machine_line(info: dict[str, Any]) -> str:
    """One line for a printed header or a results table caption."""
    return f"{info['nproc']} cores ({info['cpu']}), load {' '.join(map(str, info['load']))}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table, ready to paste into docs/BENCHMARKS.md."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and the two ends of its 95% Student-t confidence interval (NaN ends with fewer than 2 values)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half
