"""One rule for timestamps everywhere: aware timestamps are converted to UTC, naive ones are refused.

A naive timestamp is ambiguous (exchange time? local time?), and guessing shifts every bar and every
news item silently, which is the worst kind of look-ahead bug. Timestamps with any explicit offset or
zone are unambiguous and converted losslessly.
"""

from __future__ import annotations

import pandas as pd

from neuralfusion.errors import DataError

__all__ = ["to_utc"]


def to_utc(values: pd.Series, *, column: str, source: str) -> pd.Series:
    """Parse `values` as timestamps and return them in UTC; naive, missing or unparseable values are errors."""
    missing = values.isna()
    if missing.any():
        raise DataError(f"column {column!r} is empty; every record needs a timestamp",
                        source=source, row=int(missing.to_numpy().argmax()))
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        raise DataError(f"column {column!r} holds naive timestamps; store them with a time zone (UTC)",
                        source=source)
    try:  # fast path: one vectorised parse; the row loop below only runs to name the bad row
        fast = pd.to_datetime(values, format="ISO8601")
    except (ValueError, TypeError):
        fast = None
    if fast is not None and isinstance(fast.dtype, pd.DatetimeTZDtype):
        return fast.dt.tz_convert("UTC")
    parsed = []
    for row, value in enumerate(values.tolist()):
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError):
            raise DataError(f"column {column!r}: {value!r} is not a timestamp", source=source, row=row) from None
        if ts is pd.NaT:
            raise DataError(f"column {column!r} is empty; every record needs a timestamp", source=source, row=row)
        if ts.tzinfo is None:
            raise DataError(
                f"column {column!r}: {value!r} has no time zone; write it as ISO 8601 with an offset, "
                "e.g. 2026-01-05T14:03:00Z",
                source=source, row=row,
            )
        parsed.append(ts.tz_convert("UTC"))
    return pd.Series(pd.DatetimeIndex(parsed), index=values.index, name=values.name)
