"""What text an encoder was trained on, and the check that keeps validation and test text out of it.

An encoder that read news from the validation or test period leaks it into every embedding: its tokenizer
and weights were shaped by text the model is scored on. So every encoder folder records the publication
time range of the text each stage trained on (`nfc encoder init`: the tokenizer; `pretrain` and `train`:
the weights), `nfc embed` copies that record into the embeddings file, and `nfc train` / `nfc backtest`
compare it with the run's split before using the embeddings.

The boundary is the training end: the close of the last bar a training window reads. News published
after it belongs to later bars, which only validation and test windows read. By default `nfc encoder
init|pretrain|train` train only on news published before the training end of the data folder that holds
the news (the default window split); `--cutoff DATE` sets it, `--cutoff none` trains on all of it (and
`nfc train` then refuses those embeddings wherever that text reaches past the run's training end).

A record (JSON, in the folder's metadata file and the embeddings file's parquet metadata):
    {"start": ISO|null, "end": ISO|null, "n_texts": int, "cutoff": ISO|null, "complete": bool,
     "stages": [{"kind", "start", "end", "n_texts", "cutoff", "source"}, ...]}
`complete` is false when some stage started from an encoder without a record (a hub checkpoint, an older
folder): its text range is unknown, and unknown is treated like a leak.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from neuralfusion.dataset import MarketData, load_data_dir
from neuralfusion.errors import DataError
from neuralfusion.features import WARMUP_BARS
from neuralfusion.specs import WindowSpec
from neuralfusion.windows import Splits, chronological_split, usable_anchors

__all__ = [
    "ENCODER_METADATA_FILE",
    "RECORD_KEY",
    "EncoderLeakError",
    "LeakCheck",
    "check_encoder_text",
    "default_cutoff",
    "parse_cutoff",
    "read_folder_record",
    "record_from_metadata",
    "resolve_cutoff",
    "stage_record",
    "texts_before",
    "training_end",
]

ENCODER_METADATA_FILE = "nfc_encoder.json"  # beside config.json in an encoder folder: how it was made
RECORD_KEY = "nfc.encoder_text"  # parquet metadata key of the record in an `nfc embed` file
ALL_TEXT = "none"  # --cutoff none: train on every text given


class EncoderLeakError(DataError):
    """The embeddings come from an encoder that read validation or test text, or whose text is unknown."""


def parse_cutoff(value: str) -> pd.Timestamp | None:
    """A --cutoff value: an ISO date/time (naive means UTC), or "none" for no cut-off."""
    if value.strip().lower() == ALL_TEXT:
        return None
    try:
        stamp = pd.Timestamp(value)
    except ValueError:
        raise ValueError(f"--cutoff {value!r} is not a date; give ISO 8601 (e.g. 2026-01-07 or "
                         "2026-01-07T14:30Z) or 'none'") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _splits(data: MarketData, window: WindowSpec) -> Splits:
    return chronological_split(usable_anchors(data.n_bars, WARMUP_BARS, window), window, data.panel.times)


def training_end(data: MarketData, window: WindowSpec) -> pd.Timestamp:
    """Close of the last bar a training window reads; later news is validation or test text."""
    return pd.Timestamp(data.panel.times[int(_splits(data, window).train[-1])]).tz_convert("UTC")


def default_cutoff(data: MarketData | None, split: tuple[str, str] | None = None) -> pd.Timestamp | None:
    """The training end of `data` (the data folder holding the news) under the date split `split` (VAL_START,
    TEST_START, as `nfc train --split`) or else the default fractions; None (no cut-off) without data."""
    if data is None:
        return None
    if split is None:
        return training_end(data, WindowSpec())
    # a date split's last training anchor is the last bar closing before VAL_START, whatever the lookback/horizon
    val_start = WindowSpec(val_start=split[0], test_start=split[1]).split_times[0]
    before = data.panel.times[data.panel.times < val_start]
    if not len(before):
        raise DataError(f"no bar closes before the validation start {val_start}: nothing to train on")
    return pd.Timestamp(before[-1]).tz_convert("UTC")


def resolve_cutoff(option: str | None, news_path: Path, data_dir: Path | None = None,
                   split: tuple[str, str] | None = None) -> pd.Timestamp | None:
    """The cut-off an encoder stage trains under: --cutoff when given, else the training end of --data, else of
    the data folder holding the news file (when it has bars), under `split` (else the default fractions), else
    None (all text, recorded as such)."""
    if option is not None:
        return parse_cutoff(option)
    folder = data_dir or news_path.parent
    if data_dir is None and not any((folder / f"bars{suffix}").exists() for suffix in (".parquet", ".csv")):
        if split is not None:
            raise ValueError(f"--split needs the data folder: {folder} has no bars file; pass --data DIR")
        return None
    return default_cutoff(load_data_dir(folder), split)


def texts_before(published: pd.Series, cutoff: pd.Timestamp | None) -> pd.Series:
    """Boolean mask of the items published strictly before `cutoff` (all when None)."""
    if cutoff is None:
        return pd.Series(True, index=published.index)
    return published < cutoff


def _iso(stamp: Any) -> str | None:
    return None if stamp is None or pd.isna(stamp) else pd.Timestamp(stamp).tz_convert("UTC").isoformat()


def stage_record(kind: str, published: pd.Series, cutoff: pd.Timestamp | None, source: str = "",
                 source_record: dict[str, Any] | None = None, has_source: bool = False) -> dict[str, Any]:
    """The record of an encoder made by stage `kind` from texts published at `published` (after the cut-off
    was applied); a stage that starts from another encoder (`has_source`) inherits its record's stages."""
    stage = {"kind": kind, "start": _iso(published.min()) if len(published) else None,
             "end": _iso(published.max()) if len(published) else None, "n_texts": len(published),
             "cutoff": _iso(cutoff), "source": source}
    complete = True
    stages: list[dict[str, Any]] = []
    if has_source:
        if source_record is None:
            complete = False
            stages.append({"kind": "unrecorded", "start": None, "end": None, "n_texts": None, "cutoff": None,
                           "source": source})
        else:
            complete = bool(source_record.get("complete", False))
            stages.extend(source_record.get("stages", []))
    stages.append(stage)
    starts = [s["start"] for s in stages if s["start"]]
    ends = [s["end"] for s in stages if s["end"]]
    cutoffs = [s["cutoff"] for s in stages if s["kind"] != "unrecorded"]
    return {"start": min(starts, key=pd.Timestamp) if starts else None,
            "end": max(ends, key=pd.Timestamp) if ends else None,
            "n_texts": sum(int(s["n_texts"] or 0) for s in stages),
            # the loosest cut-off of any stage: None if any stage trained without one
            "cutoff": None if not cutoffs or None in cutoffs else max(cutoffs, key=pd.Timestamp),
            "complete": complete, "stages": stages}


def read_folder_record(path: str | Path) -> dict[str, Any] | None:
    """The text record of an encoder folder, or None (a hub id, or a folder made before records existed)."""
    meta_path = Path(path).expanduser() / ENCODER_METADATA_FILE
    if not meta_path.is_file():
        return None
    record = json.loads(meta_path.read_text()).get("text")
    return record if isinstance(record, dict) else None


def record_from_metadata(meta: dict[str, str]) -> dict[str, Any] | None:
    """The record stored in an embeddings file's metadata, or None when it has none."""
    raw = meta.get(RECORD_KEY)
    return json.loads(raw) if raw else None


@dataclass(frozen=True)
class LeakCheck:
    """The verdict on one embeddings file against one split, as recorded in run.json and the backtest report."""

    status: str  # "clean", "leak" (text after the training end) or "unrecorded" (text range unknown)
    text_start: str | None
    text_end: str | None
    training_end: str
    allowed: bool  # --allow-encoder-leak was given (only meaningful when status != "clean")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "text_start": self.text_start, "text_end": self.text_end,
                "training_end": self.training_end, "allowed": self.allowed}


def check_encoder_text(record: dict[str, Any] | None, end: pd.Timestamp, allow_leak: bool,
                       source: str = "embeddings") -> LeakCheck:
    """Refuse (EncoderLeakError, naming the dates and the fix) embeddings whose encoder read text published
    after `end`, or whose text range is not recorded, unless `allow_leak`."""
    text_start = record.get("start") if record else None
    text_end = record.get("end") if record else None
    if record is None or not record.get("complete", False):
        status = "unrecorded"
        why = ("its encoder has no record of the text it was trained on" if record is None else
               "its encoder started from one without a record of its training text "
               f"({_unrecorded_sources(record)})")
    elif text_end is not None and pd.Timestamp(text_end) > end:
        status = "leak"
        why = (f"its encoder was trained on news published {text_start} .. {text_end}, past this split's training "
               f"end {_iso(end)} (the validation and test periods start after it)")
    else:
        status = "clean"
        why = ""
    check = LeakCheck(status, text_start, text_end, _iso(end), allow_leak)
    if status != "clean" and not allow_leak:
        raise EncoderLeakError(f"{why}; build the encoder from news before {_iso(end)} (`nfc encoder init|pretrain"
                               f"|train --cutoff {_iso(end)}`, the default for a data folder's news) and re-embed, "
                               "or pass --allow-encoder-leak to use it anyway (recorded in the run and the report)",
                               source=source)
    return check


def _unrecorded_sources(record: dict[str, Any]) -> str:
    stages: Sequence[dict[str, Any]] = record.get("stages", [])
    return ", ".join(s.get("source") or "?" for s in stages if s.get("kind") == "unrecorded") or "unknown"
