"""`nfc data export`: the live stores' history (ClickHouse bars, MongoDB news) as a training data folder.

The sources are the ones `nfc predict` reads, with the same column and field maps, so a model can be
trained on exactly what the live job will read. The folder is the clean contract form that `nfc data
import` writes (neuralfusion.data.vendor.write_data_folder), staged so it appears whole or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from neuralfusion.data.news import validate_news
from neuralfusion.data.vendor import write_data_folder
from neuralfusion.datafolder import DATA_FILES
from neuralfusion.dataset import market_data
from neuralfusion.errors import DataError
from neuralfusion.specs import BarSpec, Universe
from neuralfusion.staging import staged_folder
from neuralfusion.summary import summarise

__all__ = ["BarSource", "NewsSource", "export_data"]


class BarSource(Protocol):
    source: str

    def load(self, symbols: tuple[str, ...], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame: ...


class NewsSource(Protocol):
    def load(self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> pd.DataFrame: ...


def export_data(bars: BarSource, news: NewsSource, universe: Universe, bar_spec: BarSpec, start: pd.Timestamp,
                end: pd.Timestamp, out: Path, force: bool = False) -> dict[str, Any]:
    """Bars with start < close time <= end and news with start < published_at <= end, put on the grid and
    written to `out`; returns `nfc data summary` of the folder. No bar or no news in the range is an error."""
    frame = bars.load(universe.symbols, start, end)
    items = news.load(start, end)
    if items.empty:
        raise DataError(f"no news in ({start.isoformat()}, {end.isoformat()}]", source="news")
    data = market_data(frame, validate_news(items, source="news"), universe, bar_spec, source=bars.source)
    with staged_folder(out, force, DATA_FILES) as folder:
        write_data_folder(folder, data)
    return summarise(data)
