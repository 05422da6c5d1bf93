"""Folders that appear whole or not at all: run folders, reports, imported and exported data folders."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["partial_folder", "staged_folder"]


def partial_folder(out: Path) -> Path:
    """Where `OUT/` is written before it is published: `OUT.partial/`."""
    return out.with_name(out.name + ".partial")


@contextmanager
def staged_folder(out: Path, force: bool, required: tuple[str, ...], keep_partial: bool = False) -> Iterator[Path]:
    """A fresh `OUT.partial/` to write into, renamed to `OUT/` only when the block succeeds with every
    `required` file; on any error the partial folder is removed, so nothing half-written looks finished
    (an old `OUT/` is replaced only by a complete new one, and only with `force`).

    keep_partial: write into `OUT.partial/` as it is (a training run's checkpoints are already there) and leave
    it in place on an error, so the run can still be resumed; it never looks finished either way.
    """
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    partial = partial_folder(out)
    if not keep_partial:
        shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=keep_partial)
    try:
        yield partial
        missing = [name for name in required if not (partial / name).exists()]
        if missing:
            raise RuntimeError(f"{partial} is missing {missing}; not publishing an incomplete folder")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        if not keep_partial:
            shutil.rmtree(partial, ignore_errors=True)
        raise
