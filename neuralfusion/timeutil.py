"""One rule for timestamps everywhere: aware timestamps are converted to UTC, naive ones are refused
unless their time zone is declared.

A naive timestamp is ambiguous (exchange time? local time?), and guessing shifts every bar and every
news item silently, which is the worst kind of look-ahead bug. Timestamps with any explicit offset or
zone are unambiguous and converted losslessly; naive ones are read in a declared `timezone` (e.g. a
vendor's America/New_York), where a wall time that does not exist or occurs twice (DST) is refused.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from neuralfusion.errors import DataError

__all__ = ["to_utc"]


def to_utc(values: pd.Series, *, column: str, source: str, timezone: str | None = None) -> pd.Series:
    """Parse `values` as timestamps and return them in UTC; missing or unparseable values are errors, and so
    are naive values unless `timezone` (an IANA name) says where they were written."""
    if timezone is not None:
        return _localized(values, column=column, source=source, timezone=timezone)
    missing = values.isna()
    if missing.any():
        raise DataError(f"column {column!r} is empty; every record needs a timestamp",
                        source=source, row=int(missing.to_numpy().argmax()))
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        raise DataError(f"column {column!r} holds naive timestamps; store them with a time zone (UTC) or declare "
                        "the zone they were written in (timezone, e.g. America/New_York)", source=source)
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
                "e.g. 2026-01-05T14:03:00Z, or declare the zone it was written in (timezone, e.g. America/New_York)",
                source=source, row=row,
            )
        parsed.append(ts.tz_convert("UTC"))
    return pd.Series(pd.DatetimeIndex(parsed), index=values.index, name=values.name)


def _localized(values: pd.Series, *, column: str, source: str, timezone: str) -> pd.Series:
    """Naive values read as wall times in `timezone`, aware values converted; both returned in UTC."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise DataError(f"time zone {timezone!r} is not an IANA name like America/New_York", source=source) from None
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if not pd.api.types.is_datetime64_dtype(values.dtype):
        try:
            values = pd.to_datetime(values, format="ISO8601")
        except (ValueError, TypeError):
            for row, value in enumerate(values.tolist()):  # name the first value that is no timestamp
                _parsed(value, column, source, row)
            raise DataError(f"column {column!r} mixes timestamps with and without a time zone; use one form",
                            source=source) from None
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            return values.dt.tz_convert("UTC")
    missing = values.isna()
    if missing.any():
        raise DataError(f"column {column!r} is empty; every record needs a timestamp",
                        source=source, row=int(missing.to_numpy().argmax()))
    try:
        return values.dt.tz_localize(zone, ambiguous="raise", nonexistent="raise").dt.tz_convert("UTC")
    except (ValueError, TypeError):  # pytz-style AmbiguousTimeError / NonExistentTimeError are ValueErrors
        local = values.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        row = int(local.isna().to_numpy().argmax())
        raise DataError(f"column {column!r}: {values.iat[row]} does not exist or occurs twice in {timezone} "
                        "(a daylight-saving change); write it with an offset", source=source, row=row) from None


def _parsed(value: object, column: str, source: str, row: int) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"column {column!r}: {value!r} is not a timestamp", source=source, row=row) from None
    if stamp is pd.NaT:
        raise DataError(f"column {column!r} is empty; every record needs a timestamp", source=source, row=row)
    return stamp
