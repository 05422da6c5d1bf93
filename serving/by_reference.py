"""Predictions by reference (POST /predict/at, gRPC PredictAt): the caller names an as-of bar, the service reads
its bars and news from its own sources and answers as /predict would for the same bars and news.

Sources (serving.settings): bars from a data folder (NFC_BARS_DIR) or ClickHouse (NFC_CLICKHOUSE_URL and the
NFC_CLICKHOUSE_* table options of `nfc predict`); news from MongoDB (NFC_NEWS_MONGO_URI, NFC_NEWS_DB,
NFC_NEWS_COLLECTION, NFC_NEWS_FIELDS), else the data folder's news file, else the prediction MongoDB
(NFC_MONGO_URI). The readers are the live job's (serving.live_sources), and the request is the one
`nfc predict` would send for that bar (`window_frames`: the model's bars, resampled onto its grid, and the news
of its lookback), so its inputs hash, and so its idempotency, equal those of an inline request with the same bars
and news.

Each portfolio worker keeps, per source, a buffer of the rows of the newest window it read (`WindowBuffer`): a
later as-of reads only the rows after what the buffer holds, from `OVERLAP` before its newest one (a row inserted
late); an as-of the buffer already covers reads nothing; an older window than the buffer's is read
once without replacing it. The buffer is trimmed to the window of its newest as-of and one window's span before it
(concurrent asks arrive out of order), so it stays as large as two windows. The article vectors of those news
stay in the worker's memo of the encoder's answers and in the encoder worker's vector cache
(serving/vector_cache.py). Beside the bar buffer the worker keeps its rows on the model's grid, checked once
(serving/bar_grid.py): when every bar of a window sits on its grid close and passes the request rules, as a
complete feed's bars do, the window is a slice of those arrays; otherwise it is built the full way (grid the rows,
check staleness, check every bar), which says what is wrong. Both give the same frames, to the bit.
A worker also remembers the inputs hash of the bars it built (while its buffers are unchanged), so a bar asked again
is answered from MongoDB when the stored prediction was made from the same inputs: no read, no build, no model run.

Refusals: an as-of that is not a bar close of the model's calendar, or lies in the future, or a universe other
than the model's, is a RequestError (400, naming the bar or the symbols); a source without the bars of that as-of
(incomplete, stale or absent), or a service without a bar source, a NotFound (404: retrying cannot help) saying
what is missing; a source that does not answer an Unavailable (503) naming the source, never its URI.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import numpy as np
import pandas as pd
import pymongo
import pymongo.errors

from neuralfusion.data.bars import BAR_COLUMNS
from neuralfusion.data.clickhouse import BarColumnMap, ClickHouseBarSource, field_map_from_text
from neuralfusion.data.news import NEWS_COLUMNS, MongoNewsSource, NewsFieldMap
from neuralfusion.dataset import find_data_file
from neuralfusion.errors import DataError, SourceUnavailable
from neuralfusion.redact import encode_userinfo
from neuralfusion.specs import BarSpec, Universe
from serving.bar_grid import BarGrid, GridWindow
from serving.client import window_frames
from serving.column_checks import RequestColumns, RequestFrames, check_columns, check_news_count, checked_news
from serving.errors import NotFound, RequestError, Unavailable
from serving.live_sources import FileBars, FileNews, check_staleness, grid_bars, grid_name
from serving.memo import BoundedMemo
from serving.request_checks import CheckedRequest, inputs_sha256
from serving.schemas import PredictAtRequest, PredictionOut, RequestLimits
from serving.settings import ServeSettings
from serving.store import PredictionRecord

__all__ = ["OVERLAP", "BufferView", "ModelWindow", "Read", "ReferenceSources", "WindowBuffer", "predict_by_reference"]

log = logging.getLogger(__name__)

OVERLAP = pd.Timedelta("15min")  # rows re-read before the newest buffered one: a bar or item inserted late
READS_KEPT = 32  # recent reads per buffer: what a test or a debugging session inspects
KNOWN_KEPT = 4096  # as-of bars whose inputs hash a worker remembers (a hash each: ~100 bytes)


class BufferView(Protocol):
    """What a buffer tells a view of its rows (serving.bar_grid.BarGrid), under the buffer's lock: the rows it holds
    after each change, all of the source's rows in (lo, hi], sorted by time."""

    def replaced(self, rows: pd.DataFrame, lo: pd.Timestamp, hi: pd.Timestamp) -> None: ...

    def extended(self, rows: pd.DataFrame, start: pd.Timestamp, lo: pd.Timestamp, hi: pd.Timestamp) -> None: ...

    def cleared(self) -> None: ...


@dataclass(frozen=True)
class Read:
    """One read of a source: the rows with start < time <= end, how many came back."""

    start: pd.Timestamp
    end: pd.Timestamp
    rows: int


class WindowBuffer:
    """The rows of one source in (lo, hi], extended by incremental reads (module docstring); thread-safe."""

    def __init__(self, load: Callable[[pd.Timestamp, pd.Timestamp], pd.DataFrame], time_column: str,
                 keys: list[str], overlap: pd.Timedelta = OVERLAP, view: BufferView | None = None) -> None:
        self._load = load
        self.view = view  # told every change of the rows held
        self.time_column = time_column
        self.keys = keys
        self.overlap = overlap
        self.frame: pd.DataFrame | None = None
        self.lo: pd.Timestamp | None = None
        self.hi: pd.Timestamp | None = None
        self.reads: deque[Read] = deque(maxlen=READS_KEPT)
        self.generation = 0  # counts the changes of the rows held: what a request built from them depends on
        self._order = [time_column, *[k for k in keys if k != time_column]]
        self._frame_times: tuple[pd.DataFrame, np.ndarray] | None = None
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every row held: the next `rows` reads its whole range again."""
        with self._lock:
            self.frame = self.lo = self.hi = None
            self.generation += 1
            if self.view is not None:
                self.view.cleared()

    def rows(self, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
        """The source's rows with first < time <= last, reading only what the buffer lacks."""
        with self._lock:
            if self.frame is None or self.lo is None or self.hi is None or not self.lo <= first < self.hi:
                fresh = self._read(first, last)
                if self.hi is None or last >= self.hi:  # the newest window yet: it becomes the buffer
                    self.frame, self.lo, self.hi = fresh, first, last
                    self.generation += 1
                    if self.view is not None:
                        self.view.replaced(fresh, first, last)
                return self._between(fresh, first, last)
            if last > self.hi:
                start = max(first, self.hi - self.overlap)
                fresh = self._read(start, last)
                # a window's span before `first` stays too: concurrent asks arrive out of order, and an as-of a few
                # bars older than the newest is then answered from memory, not read again whole
                keep_from = max(self.lo, first - (last - first))
                kept = self._between(self.frame, keep_from, start)
                merged = pd.concat([part for part in (kept, fresh) if len(part)] or [fresh], ignore_index=True)
                # both parts are sorted and fresh starts after kept: a row twice is a source's answer beyond its range
                # (keyed by time, only a fresh row at or before `start` can be one), or an item whose time changed
                beyond = self.time_column not in self.keys or (len(fresh) and self._times_of(fresh)[0] <= start.value)
                twice = beyond and merged.duplicated(self.keys).any()
                self.frame = merged.drop_duplicates(self.keys, keep="last").sort_values(
                    self._order, ignore_index=True) if twice else merged
                self.lo, self.hi = keep_from, last
                self.generation += 1
                if self.view is not None and twice:  # rows before `start` were dropped too: the view starts again
                    self.view.replaced(self.frame, keep_from, last)
                elif self.view is not None:
                    self.view.extended(self.frame, start, keep_from, last)
            return self._between(self.frame, first, last)

    def _read(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """The source's rows in (start, end], sorted by time and keys: the readers answer validated frames
        (`validate_bars`, `validate_news`), which are in that order."""
        frame = self._load(start, end)
        self.reads.append(Read(start, end, len(frame)))
        return frame

    def _between(self, frame: pd.DataFrame, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
        """The rows with first < time <= last of a frame sorted by time (two binary searches, no mask)."""
        if frame.empty:
            return frame
        times = self._times_of(frame)
        lo, hi = np.searchsorted(times, first.value, side="right"), np.searchsorted(times, last.value, side="right")
        return frame.iloc[lo:hi].reset_index(drop=True)

    def _times_of(self, frame: pd.DataFrame) -> np.ndarray:
        """The frame's times as UTC nanoseconds; the held frame's are computed once per change."""
        if frame is self.frame and self._frame_times is not None and self._frame_times[0] is frame:
            return self._frame_times[1]
        times = pd.DatetimeIndex(frame[self.time_column]).as_unit("ns").asi8
        if frame is self.frame:
            self._frame_times = (frame, times)
        return times


@dataclass(frozen=True)
class ModelWindow:
    """What the by-reference path needs of the served model (serving.runtime.PortfolioRuntime has it all)."""

    universe: Universe
    bar_spec: BarSpec
    bars_needed: int
    lookback: int

    @classmethod
    def of(cls, runtime: Any) -> ModelWindow:
        return cls(runtime.universe, runtime.bar_spec, runtime.bars_needed, runtime.lookback)


class ReferenceSources:
    """A portfolio worker's bar and news sources with their buffers; `request` turns a PredictAtRequest into the
    checked frames and inputs hash of the request /predict would get. Connections open on first use and close
    with `close()`."""

    def __init__(self, settings: ServeSettings, limits: RequestLimits | None = None, views: bool = True) -> None:
        """`views`: keep the bar buffer's rows on the model's grid between asks (serving.bar_grid); without it every
        window is built the full way from the buffer's rows, which the grid's windows must equal."""
        self.settings = settings
        self.views = views
        self.limits = limits or RequestLimits.from_env()
        self.limit = pd.Timedelta(settings.max_staleness)
        self._stack = ExitStack()
        self._bars: _BarSource | None = None
        self._news_load: Callable[[pd.Timestamp, pd.Timestamp], pd.DataFrame] | None = None
        self._window: ModelWindow | None = None
        self.bar_buffer: WindowBuffer | None = None
        self.news_buffer: WindowBuffer | None = None
        self._known: BoundedMemo[pd.Timestamp, tuple[tuple[int, int], str]] = BoundedMemo(KNOWN_KEPT)  # as-of -> hash
        self._lock = threading.Lock()

    def close(self) -> None:
        self._stack.close()

    def known(self, window: ModelWindow, query: PredictAtRequest,
              now: pd.Timestamp | None = None) -> tuple[pd.Timestamp, str | None]:
        """The as-of bar `query` names, and the inputs hash of its request when this worker built it since its
        buffers last changed (then nothing needs reading: the source's newest bar only for the default as-of)."""
        _check_universe(query.symbols, window.universe)
        with self._lock:
            bars_buffer, news_buffer, source = self._buffers(window)
        with _translated(bars_buffer):
            as_of = self._as_of(query, window, source, now or pd.Timestamp.now(tz="UTC"))
        entry = self._known.get(as_of)
        current = (bars_buffer.generation, news_buffer.generation)
        return as_of, entry[1] if entry is not None and entry[0] == current else None

    def request(self, window: ModelWindow, query: PredictAtRequest,
                now: pd.Timestamp | None = None) -> CheckedRequest:
        """The /predict request of `query`'s as-of bar, built from the sources and checked as a columnar body with
        its arrays would be (blocking: run it in a thread). Raises RequestError, NotFound or Unavailable (module
        docstring)."""
        _check_universe(query.symbols, window.universe)
        clock = window.bar_spec.clock
        with self._lock:
            bars_buffer, news_buffer, source = self._buffers(window)
        with _translated(bars_buffer):
            as_of = self._as_of(query, window, source, now or pd.Timestamp.now(tz="UTC"))
            first = clock.earlier(as_of, window.bars_needed + 1) - self.limit
            raw = bars_buffer.rows(first, as_of)
            news_from = clock.earlier(as_of, min(window.lookback, window.bars_needed))
            news = news_buffer.rows(news_from, as_of)
            clean: GridWindow | None = None
            if isinstance(grid := bars_buffer.view, BarGrid) and \
                    window.bars_needed * len(window.universe.symbols) <= self.limits.max_bars:
                clean = grid.window(first, clock.earlier(as_of, window.bars_needed - 1), as_of)
            if clean is None:  # not all clean on the grid: the full way, which names what is wrong
                bars = self._gridded_window(raw, window, as_of, first, source)
        try:
            if clean is None:
                frames = check_columns(_request_columns(
                    *window_frames(bars, news, as_of, window.bars_needed, clock, window.lookback), query.request_id),
                    self.limits)
            else:  # `news` is the window's news (the lookback), as window_frames would cut it
                check_news_count(len(news), self.limits)
                frames = RequestFrames(clean.bars, checked_news(_news_columns(news), len(news), self.limits),
                                       query.request_id)
        except RequestError as err:  # e.g. more news in the window than NFC_MAX_NEWS allows a request
            raise NotFound(f"the source's window of {as_of.isoformat()} cannot be sent to the model: "
                           f"{err.message}") from None
        reference = CheckedRequest(frames, inputs_sha256(frames), None if clean is None else clean.panel)
        self._known.put(as_of, ((bars_buffer.generation, news_buffer.generation), reference.inputs_sha256))
        return reference

    # -- internals ---------------------------------------------------------------------------------------------

    def _gridded_window(self, raw: pd.DataFrame, window: ModelWindow, as_of: pd.Timestamp, first: pd.Timestamp,
                        source: _BarSource) -> pd.DataFrame:
        """The source's rows of the window (and the staleness margin before it) checked for the as-of bar and put
        on the model's grid; NotFound or DataError (made NotFound by `_translated`) when they cannot be."""
        if raw.empty or raw["timestamp"].max() < as_of:
            newest = "none" if raw.empty else raw["timestamp"].max().isoformat()
            raise NotFound(f"{source.name} has no bars for the as-of bar {as_of.isoformat()} yet (its newest "
                           f"bar after {first.isoformat()}: {newest}); ask again once the bar has closed and "
                           "been written, or name an earlier as_of")
        check_staleness(raw, window.universe.symbols, [as_of], self.limit, window.bar_spec.clock, source.name)
        return grid_bars(raw, window.universe, window.bar_spec, source.name)

    def _buffers(self, window: ModelWindow) -> tuple[WindowBuffer, WindowBuffer, _BarSource]:
        """The sources (opened once) and the buffers of `window` (new ones after a model swap changed it)."""
        if self._bars is None:
            self._bars = self._open_bars()
            self._news_load = self._open_news()
        if self._window != window or self.bar_buffer is None or self.news_buffer is None:
            bars = self._bars
            self.bar_buffer = WindowBuffer(lambda start, end: bars.load(window.universe.symbols, start, end),
                                           "timestamp", ["timestamp", "symbol"],
                                           view=BarGrid(window.universe.symbols, window.bar_spec.clock)
                                           if self.views else None)
            self.news_buffer = WindowBuffer(self._news_load, "published_at", ["id"])  # type: ignore[arg-type]
            self._window = window
        return self.bar_buffer, self.news_buffer, self._bars

    def _as_of(self, query: PredictAtRequest, window: ModelWindow, source: _BarSource,
               now: pd.Timestamp) -> pd.Timestamp:
        clock = window.bar_spec.clock
        if query.as_of is None:  # the newest complete bar: the grid bar the newest source row completes
            newest = source.latest(window.universe.symbols)
            if pd.isna(newest):
                raise NotFound(f"{source.name} holds no bars of {list(window.universe.symbols)}")
            return clock.last_close(min(newest, now))
        as_of = pd.Timestamp(query.as_of).tz_convert("UTC")
        if not clock.is_close(as_of):
            raise RequestError(f"as_of {as_of.isoformat()} is not a bar close of the model's "
                               f"{grid_name(window.bar_spec)} grid: the last bar closing before it closed at "
                               f"{clock.last_close(as_of).isoformat()}")
        if as_of > now:
            raise RequestError(f"as_of {as_of.isoformat()} is in the future (now {now.isoformat()}): name a bar "
                               "that has closed")
        return as_of

    def _open_bars(self) -> _BarSource:
        settings = self.settings
        if settings.bars_dir:
            try:
                path = find_data_file(Path(settings.bars_dir), "bars", (".parquet", ".csv"))
            except DataError as err:
                raise Unavailable(f"NFC_BARS_DIR: {err}") from None
            return _BarSource(FileBars(path), f"the data folder's {path.name}")
        if settings.clickhouse_url:
            try:
                source = self._stack.enter_context(ClickHouseBarSource.from_url(
                    settings.clickhouse_url, table=settings.clickhouse_table,
                    columns=BarColumnMap.parse(settings.clickhouse_columns), label=settings.clickhouse_label,
                    candle=settings.clickhouse_candle))
            except ValueError as err:  # already scrubbed of the password
                raise Unavailable(f"NFC_CLICKHOUSE_*: {err}") from None
            return _BarSource(source, source.source)
        # 404, not 503: retrying cannot help (clients retry a 503), the route has nothing to read here
        raise NotFound("this service has no bar source for predictions by reference: its operator sets NFC_BARS_DIR "
                       "(a data folder) or NFC_CLICKHOUSE_URL and restarts it; send the bars to /predict meanwhile")

    def _open_news(self) -> Callable[[pd.Timestamp, pd.Timestamp], pd.DataFrame]:
        settings = self.settings
        if settings.bars_dir and not settings.news_mongo_uri:
            folder = Path(settings.bars_dir)
            try:
                return FileNews(find_data_file(folder, "news", (".jsonl", ".parquet"))).load
            except DataError:  # a folder without news: every window reads none
                log.warning("NFC_BARS_DIR %s has no news file: predictions by reference read no news", folder)
                return _no_news
        uri = settings.news_mongo_uri or settings.mongo_uri
        client = self._stack.enter_context(pymongo.MongoClient(
            encode_userinfo(uri), serverSelectionTimeoutMS=settings.mongo_timeout_ms, tz_aware=True))
        try:
            fields = field_map_from_text(NewsFieldMap, settings.news_fields)
        except ValueError as err:
            raise Unavailable(f"NFC_NEWS_FIELDS: {err}; fix it and restart") from None
        news = MongoNewsSource(client[settings.news_db][settings.news_collection], fields)
        name = f"mongodb collection {settings.news_db}.{settings.news_collection}"

        def load(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
            try:
                return news.load(start, end)
            except pymongo.errors.PyMongoError as err:
                raise SourceUnavailable(f"reading news failed ({type(err).__name__})", source=name) from None

        return load


@dataclass(frozen=True)
class _BarSource:
    """A bar reader as the by-reference path uses it: rows of a range (every symbol or not), the newest close.
    One call at a time: a ClickHouse client runs one query at a time, and a file is parsed once per change."""

    reader: FileBars | ClickHouseBarSource
    name: str
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def load(self, symbols: tuple[str, ...], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        with self._lock:
            if isinstance(self.reader, ClickHouseBarSource):
                return self.reader.load(symbols, start, end, every_symbol=False)
            return self.reader.load(symbols, start, end)

    def latest(self, symbols: tuple[str, ...]) -> pd.Timestamp:
        with self._lock:
            if isinstance(self.reader, ClickHouseBarSource):
                return self.reader.latest(symbols)
            return self.reader.latest()


@contextmanager
def _translated(bars: WindowBuffer) -> Iterator[None]:
    """Source trouble as the service's refusals: a source that does not answer is Unavailable (its driver's words,
    hosts and ports, go to the log only); missing or stale bars are NotFound, and the bar buffer is emptied, as
    the bars may still be written and the next ask must read them again."""
    try:
        yield
    except SourceUnavailable as err:
        log.warning("by reference: %s", err)
        raise Unavailable(f"{err.source or 'a source'} did not answer or failed a query; retry when it answers "
                          "(the server log says why)") from None
    except (DataError, NotFound) as err:
        bars.clear()
        raise NotFound(str(err) if isinstance(err, NotFound) else
                       f"the bars for the as-of bar cannot be used: {err}") from None


async def predict_by_reference(sources: ReferenceSources, window: ModelWindow, query: PredictAtRequest,
                               held: Callable[[datetime], Awaitable[PredictionRecord | None]],
                               predict: Callable[[CheckedRequest], Awaitable[PredictionOut]],
                               limiter: anyio.CapacityLimiter) -> PredictionOut:
    """The answer to `query`. A bar this worker built since its buffers last changed is looked up in MongoDB
    (`held`): stored from the same inputs, the stored prediction is the answer (`duplicate: true`), with no read,
    check or model run. Any other bar is read and checked here and handed to `predict` (which stores it; a bar
    stored before from the same inputs, e.g. by another worker, comes back from the store as `duplicate: true`,
    and one stored from other inputs is the 409 /predict gives). The read and checks take one of `limiter`'s
    threads (the worker's NFC_PREPARE_THREADS)."""
    as_of, inputs_hash = await anyio.to_thread.run_sync(sources.known, window, query)
    pinned = query.model_copy(update={"as_of": as_of.to_pydatetime()})  # the default as-of, resolved once
    if inputs_hash is not None:
        record = await held(as_of.to_pydatetime())
        if record is not None and record.inputs_sha256 == inputs_hash:
            return PredictionOut.from_record(record, duplicate=True)
    reference = await anyio.to_thread.run_sync(sources.request, window, pinned, limiter=limiter)
    return await predict(reference)


def _request_columns(bars: pd.DataFrame, news: pd.DataFrame, request_id: str | None) -> RequestColumns:
    """The window's rows as the arrays a columnar body carries (times as epoch nanoseconds): what `predict_payload`
    would send for them, without a detour through text."""
    return RequestColumns(
        bars={"timestamp": pd.DatetimeIndex(bars["timestamp"]).as_unit("ns").asi8, "symbol": bars["symbol"].tolist(),
              **{column: bars[column].to_numpy(np.float64) for column in BAR_COLUMNS[2:]}},
        news=_news_columns(news), request_id=request_id)


def _news_columns(news: pd.DataFrame) -> dict[str, Any]:
    """Contract news rows as the arrays a columnar body carries (times as epoch nanoseconds)."""
    return {"id": news["id"].tolist(), "published_at": pd.DatetimeIndex(news["published_at"]).as_unit("ns").asi8,
            "title": news["title"].fillna("").tolist(), "body": news["body"].fillna("").tolist(),
            "symbols": [None if s is None else list(s) for s in news["symbols"]]}


def _no_news(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    return pd.DataFrame(columns=list(NEWS_COLUMNS))


def _check_universe(symbols: list[str] | None, universe: Universe) -> None:
    """The caller's universe, when given, must be the model's (in any order)."""
    if symbols is None or set(symbols) == set(universe.symbols):
        return
    extra = sorted(set(symbols) - set(universe.symbols))
    missing = [s for s in universe.symbols if s not in set(symbols)]
    parts = ([f"{extra} not traded by the model"] if extra else []) + ([f"{missing} missing"] if missing else [])
    raise RequestError(f"the universe {symbols} is not the model's {list(universe.symbols)}: {', '.join(parts)}; "
                       "omit symbols or send the model's")

