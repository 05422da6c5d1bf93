"""Errors raised on bad input; each message says where the problem is and what to fix."""

from __future__ import annotations

__all__ = ["DataError", "SourceUnavailable"]


class DataError(ValueError):
    """Input data violates a data contract (README.md, docs/DESIGN.md).

    The message always names the source (file, collection or symbol) and, where known, the row,
    so a user can go straight to the offending record.
    """

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None) -> None:
        where = []
        if source:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        prefix = f"{': '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.source = source
        self.row = row


class SourceUnavailable(DataError):
    """A data source did not answer (connection refused, timeout, a failed query): nothing is wrong with the data,
    so a service answers "retry later" rather than "fix your input". The message names the source, never its
    URI or password."""
