"""Vendor files into the contract's column names: an explicit map, then case-insensitive matching.

A vendor writes `Date, Ticker, Open, High, Low, Close, Volume`; the contract reads
`timestamp, symbol, open, high, low, close, volume`. `standard_columns` renames the mapped columns
(`{"Date": "timestamp", "Ticker": "symbol"}`) and then every column whose name equals a contract name
ignoring case and surrounding blanks (`Close` -> `close`). Two columns that would get one name are an
error naming both, never a silent pick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from neuralfusion.errors import DataError

__all__ = ["parse_column_map", "read_table", "standard_columns"]


def standard_columns(frame: pd.DataFrame, names: Iterable[str], mapping: Mapping[str, str] | None,
                     source: str) -> pd.DataFrame:
    """`frame` with vendor columns renamed to the contract `names`: first `mapping` (vendor -> contract),
    then case-insensitive matches; other columns are kept as they are."""
    names = tuple(names)
    mapping = dict(mapping or {})
    absent = [vendor for vendor in mapping if vendor not in frame.columns]
    if absent:
        raise DataError(f"the column map names columns {absent} that are not in the file; it has "
                        f"{[str(c) for c in frame.columns]}", source=source)
    unknown = sorted(set(mapping.values()) - set(names))
    if unknown:
        raise DataError(f"the column map targets {unknown}, which are not contract columns {list(names)}",
                        source=source)
    renamed: dict[str, str] = dict(mapping)
    for column in frame.columns:
        if column in renamed:
            continue
        folded = str(column).strip().lower()
        if folded in names:
            renamed[column] = folded
    targets: dict[str, list[str]] = {}
    for vendor, name in renamed.items():
        targets.setdefault(name, []).append(str(vendor))
    clashes = {name: vendors for name, vendors in targets.items() if len(vendors) > 1}
    if clashes:
        detail = "; ".join(f"{vendors} all read as {name!r}" for name, vendors in clashes.items())
        raise DataError(f"columns clash: {detail}; map one of them explicitly or drop the others", source=source)
    kept = [c for c in frame.columns if c in renamed or str(c) not in targets]
    return frame[kept].rename(columns=renamed)


def parse_column_map(pairs: Iterable[str]) -> dict[str, str]:
    """`VENDOR=contract` pairs (from the command line) as a dict; a malformed pair is a ValueError."""
    mapping = {}
    for pair in pairs:
        vendor, sep, name = pair.partition("=")
        if not sep or not vendor.strip() or not name.strip():
            raise ValueError(f"column map entry {pair!r} is not VENDOR=name (e.g. Date=timestamp)")
        mapping[vendor.strip()] = name.strip()
    return mapping


def read_table(path: Path, kinds: tuple[str, ...], what: str) -> pd.DataFrame:
    """A CSV (also .csv.gz), parquet or JSON-lines file as a frame; `kinds` lists the suffixes allowed."""
    if not path.exists():
        raise DataError("file not found", source=str(path))
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    kind = "csv" if suffixes and (suffixes[-1] == ".csv" or suffixes[-2:] == [".csv", ".gz"]) else \
        path.suffix.lower().lstrip(".")
    if kind not in kinds:
        raise DataError(f"unsupported {what} file type; use {', '.join('.' + k for k in kinds)}", source=str(path))
    if kind == "parquet":
        return pd.read_parquet(path)
    if kind == "csv":
        return pd.read_csv(path)
    raise DataError(f"{kind} is read by its own reader", source=str(path))
