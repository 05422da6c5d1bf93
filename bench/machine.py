"""What every benchmark records next to its numbers: the machine, and how busy it was while it ran.

The benchmarks run on small shared machines, where a number means little without the CPU it ran on and
the load from other processes at the time; `machine()` goes into each results file and each printed header.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["load_average", "machine", "machine_line", "markdown_table"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
