"""What every artifact (run, report, package) records: JSON files written sorted and indented, so two runs diff
cleanly, and the git commit of the code that wrote them. Their folders are written whole (neuralfusion.staging).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["git_commit", "write_json"]


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def git_commit() -> str | None:
    """The commit of the code that made an artifact, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,  # noqa: S607
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
