"""Folders that appear whole or not at all: run folders, reports, imported and exported data folders."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged_folder"]


@contextmanager
def staged_folder(out: Path, force: bool, required: tuple[str, ...]) -> Iterator[Path]:
    """A fresh `OUT.partial/` to write into, renamed to `OUT/` only when the block succeeds with every
    `required` file; on any error the partial folder is removed, so nothing half-written looks finished
    (an old `OUT/` is replaced only by a complete new one, and only with `force`)."""
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        missing = [name for name in required if not (partial / name).exists()]
        if missing:
            raise RuntimeError(f"{partial} is missing {missing}; not publishing an incomplete folder")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
