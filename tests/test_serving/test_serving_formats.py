"""The columnar predict bodies (serving/columns.py) and their vectorised checks (serving/column_checks.py): every
per-item rule refused with the row and symbol named in JSON columns and Arrow (and refused by the row models too),
the same frames, inputs and hash from rows, columns and Arrow, and through a real `bentoml serve` (the reliability
server): the same weights as the offline runtime in every format, a repeat in another format answered as a
duplicate, limits refused before any heavy work, and malformed Arrow bodies answered 400."""

from __future__ import annotations

import copy
import json
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from builders import STEP
from pydantic import ValidationError
from serving_servers import AS_OF_BARS, KEY, SECOND_VERSION

from neuralfusion.data.bars import BarFileSource
from neuralfusion.data.news import read_news
from serving.client import arrow_payload, columns_payload, columns_to_proto, predict_grpc, predict_payload
from serving.column_checks import RequestFrames, check_columns
from serving.columns import (
    ARROW_MEDIA_TYPE,
    ARROW_SCHEMA,
    EXAMPLE_COLUMNS,
    PredictColumnsRequest,
    arrow_body,
    columns_body,
    columns_from_arrow,
    columns_from_json,
    columns_from_rows,
)
from serving.errors import RequestError
from serving.proto_convert import columns_from_proto
from serving.request_checks import as_frames, inputs_sha256
from serving.runtime import PortfolioRuntime
from serving.schemas import EXAMPLE_INPUT, PredictRequest, RequestLimits

LIMITS = RequestLimits()
WEIGHTS_ATOL = 1e-6


def columns_refusal(body: dict[str, Any], limits: RequestLimits = LIMITS) -> str:
    with pytest.raises(RequestError) as caught:
        check_columns(columns_from_json(PredictColumnsRequest.model_validate(body)), limits)
    return caught.value.message


def arrow_refusal(body: bytes, limits: RequestLimits = LIMITS) -> str:
    with pytest.raises(RequestError) as caught:
        check_columns(columns_from_arrow(body), limits)
    return caught.value.message


def rows_refusal(body: dict[str, Any]) -> str:
    """Why /predict refuses the same request as rows: its row models, or the array checks every body passes."""
    with pytest.raises((ValidationError, RequestError)) as caught:
        check_columns(columns_from_rows(PredictRequest.model_validate(as_rows(body))), LIMITS)
    return str(caught.value)


def as_rows(body: dict[str, Any]) -> dict[str, Any]:
    """The same request as a /predict body."""
    bars = [dict(zip(body["bars"], values, strict=True)) for values in zip(*body["bars"].values(), strict=True)]
    news = [dict(zip(body["news"], values, strict=True)) for values in zip(*body["news"].values(), strict=True)]
    return {"bars": bars, "news": news, "request_id": body.get("request_id")}


def as_arrow(body: dict[str, Any]) -> bytes:
    """The same request as an Arrow body (its times must parse: Arrow carries times, not text)."""
    bars = pd.DataFrame(body["bars"]).assign(timestamp=lambda f: pd.to_datetime(f["timestamp"], utc=True))
    news = pd.DataFrame(body["news"]).assign(published_at=lambda f: pd.to_datetime(f["published_at"], utc=True))
    return arrow_body(bars, news, body.get("request_id"))


def changed(path: str, row: int, value: Any) -> dict[str, Any]:
    """EXAMPLE_COLUMNS with `table.field[row]` set to `value`."""
    body = copy.deepcopy(EXAMPLE_COLUMNS)
    table, field = path.split(".")
    body[table][field][row] = value
    return body


# (change, what the refusal says); EXAMPLE_COLUMNS' bars: rows 0/1 AURX/BLTQ at 00:03, rows 2/3 at 00:06
RULES = [
    (("bars.open", 2, 0.0), "bars row 2 (AURX at 2026-01-05T00:06:00Z): open 0.0 must be a finite number > 0"),
    (("bars.close", 1, float("nan")), "bars row 1 (BLTQ at 2026-01-05T00:03:00Z): close nan must be a finite number"),
    (("bars.low", 3, -float("inf")), "bars row 3 (BLTQ at 2026-01-05T00:06:00Z): low -inf must be a finite number"),
    (("bars.high", 0, float("inf")), "bars row 0 (AURX at 2026-01-05T00:03:00Z): high inf must be a finite number"),
    (("bars.volume", 0, -1.0), "bars row 0 (AURX at 2026-01-05T00:03:00Z): volume -1.0 must be a finite number >= 0"),
    (("bars.volume", 2, float("nan")), "bars row 2 (AURX at 2026-01-05T00:06:00Z): volume nan must be a finite"),
    (("bars.high", 3, 49.96), "bars row 3 (BLTQ at 2026-01-05T00:06:00Z): high 49.96 and low 49.88 must bound open "
                              "49.95 and close 49.97"),
    (("bars.low", 0, 100.05), "bars row 0 (AURX at 2026-01-05T00:03:00Z): high 100.21 and low 100.05 must bound"),
    (("bars.symbol", 1, "S" * 33), "bars row 1 (at 2026-01-05T00:03:00Z): symbol 'SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS' "
                                   "must have 1 to 32 characters"),
    (("bars.symbol", 2, ""), "bars row 2 (at 2026-01-05T00:06:00Z): symbol '' must have 1 to 32 characters"),
    (("news.id", 1, "i" * 129), "news row 1 (id '" + "i" * 129 + "'): id must have 1 to 128 characters"),
    (("news.title", 1, "  "), "news row 1 (id 'n000002'): news item 'n000002' has no text"),
    (("news.symbols", 0, ["AURX"] * 65), "news row 0 (id 'n000001'): symbols has 65 tickers, at most 64"),
    (("news.symbols", 1, ["S" * 33]), "news row 1 (id 'n000002'): symbols must hold tickers of 1 to 32 characters"),
]


@pytest.mark.parametrize(("change", "expected"), RULES, ids=[f"{c[0]}[{c[1]}]={c[2]!r}"[:40] for c, _ in RULES])
def test_each_rule_is_refused_naming_the_row_in_columns_and_arrow_as_the_row_models_refuse_it(change, expected):
    body = changed(*change)
    assert expected in columns_refusal(body)
    assert expected in arrow_refusal(as_arrow(body))
    rows = rows_refusal(body)  # one rule set: /predict refuses the same request (its row models first, where they can)
    assert expected in rows or "validation error for PredictRequest" in rows


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("bars.timestamp", "2026-01-05T00:03:00", "bars row 1 (BLTQ): timestamp '2026-01-05T00:03:00' has no time zone; "
                                              "write ISO 8601 with an offset"),
    ("bars.timestamp", "2300-01-05T00:03:00Z", "bars row 1 (BLTQ): timestamp 2300-01-05T00:03:00Z is outside "
                                               "1970-01-01T00:00:00+00:00 .. 2200-01-01T00:00:00+00:00"),
    ("bars.timestamp", "1969-12-31T23:59:59Z", "is outside 1970-01-01T00:00:00+00:00"),
    ("bars.timestamp", "9999-12-31T23:59:00-14:00", "is outside 1970-01-01T00:00:00+00:00"),
    ("bars.timestamp", "yesterday", "timestamp 'yesterday' has no time zone"),
    ("bars.timestamp", "2026-13-05T00:03:00Z", "timestamp '2026-13-05T00:03:00Z' is not an RFC 3339 time"),
    ("news.published_at", "2026-01-05T00:04:41", "news row 1 (id 'n000002'): published_at '2026-01-05T00:04:41' has "
                                                 "no time zone"),
])
def test_times_in_json_columns_must_be_aware_and_inside_1970_to_2200(path, value, expected):
    body = changed(path, 1, value)
    assert expected in columns_refusal(body)
    rows = rows_refusal(body)
    assert expected in rows if path.startswith("bars.") else "news.1.published_at" in rows  # news: its row model


def test_epoch_nanoseconds_are_the_same_times_as_rfc_3339_strings():
    body = copy.deepcopy(EXAMPLE_COLUMNS)
    body["bars"]["timestamp"] = pd.to_datetime(body["bars"]["timestamp"], utc=True).as_unit("ns").asi8.tolist()
    body["news"]["published_at"] = pd.to_datetime(body["news"]["published_at"], utc=True).as_unit("ns").asi8.tolist()
    from_ints = check_columns(columns_from_json(PredictColumnsRequest.model_validate(body)), LIMITS)
    assert inputs_sha256(from_ints) == inputs_sha256(PredictRequest.model_validate(EXAMPLE_INPUT))
    body["bars"]["timestamp"][2] = 9 * 10 ** 18  # 2255-03-14
    assert "bars row 2 (AURX): timestamp 9000000000000000000 (epoch nanoseconds) is outside" in columns_refusal(body)


def test_arrow_times_need_a_time_zone_and_the_range_in_any_unit():
    frames = as_frames(PredictRequest.model_validate(EXAMPLE_INPUT))
    table = pa.ipc.open_stream(arrow_body(frames.bars, frames.news)).read_all()
    bars = table.column("bars").combine_chunks().flatten()

    def with_times(times: pa.Array) -> bytes:
        struct = pa.StructArray.from_arrays([times, *(bars.field(n) for n in bars.type.names[1:])],
                                            names=bars.type.names)
        column = pa.ListArray.from_arrays(pa.array([0, len(struct)], pa.int32()), struct)
        batch = pa.record_batch([column], names=["bars"])
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()

    seconds = pa.array(frames.bars["timestamp"]).cast(pa.int64()).to_numpy() // 10 ** 9
    assert "without a time zone" in arrow_refusal(with_times(pa.array(seconds, pa.timestamp("s"))))
    far = seconds.copy()
    far[3] = 253402300799  # 9999-12-31T23:59:59, fine in seconds, beyond int64 in nanoseconds
    message = arrow_refusal(with_times(pa.array(far, pa.timestamp("s", tz="UTC"))))
    assert "bars row 3 (BLTQ): timestamp 9999-12-31T23:59:59Z is outside 1970-01-01T00:00:00+00:00" in message
    in_seconds = check_columns(columns_from_arrow(with_times(pa.array(seconds, pa.timestamp("s", tz="UTC")))), LIMITS)
    assert in_seconds.bars["timestamp"].equals(frames.bars["timestamp"])


@pytest.mark.parametrize(("limits", "expected"), [
    (RequestLimits(max_bars=3), "4 bars are over the limit of 3 (NFC_MAX_BARS)"),
    (RequestLimits(max_news=1), "2 news items are over the limit of 1 (NFC_MAX_NEWS)"),
    (RequestLimits(max_text_chars=40), "news row 0 (id 'n000001'): 68 characters of text are over the limit of 40 "
                                       "(NFC_MAX_TEXT_CHARS)"),
])
def test_request_limits_hold_for_columns_and_arrow(limits, expected):
    assert expected in columns_refusal(EXAMPLE_COLUMNS, limits)
    assert expected in arrow_refusal(as_arrow(EXAMPLE_COLUMNS), limits)


def test_limits_are_checked_before_any_row():
    body = changed("bars.open", 0, -1.0)  # a bad row that a later check would name
    assert "4 bars are over the limit of 3" in columns_refusal(body, RequestLimits(max_bars=3))


def test_a_news_set_seen_before_is_remembered_by_its_content_and_the_text_limit():
    def news_of(body: dict[str, Any], limits: RequestLimits = LIMITS) -> pd.DataFrame:
        return check_columns(columns_from_json(PredictColumnsRequest.model_validate(body)), limits).news

    first = news_of(EXAMPLE_COLUMNS)
    assert news_of(copy.deepcopy(EXAMPLE_COLUMNS)) is first  # the same values: checked once
    edited = news_of(changed("news.body", 0, "An edited body."))
    assert edited is not first and edited["body"].tolist()[0] == "An edited body."
    assert edited["body"].tolist()[1:] == first["body"].tolist()[1:]
    assert news_of(changed("news.symbols", 1, None))["symbols"].tolist()[1] is None
    # remembered under the default limits, refused under a lower one
    assert "over the limit of 40" in columns_refusal(EXAMPLE_COLUMNS, RequestLimits(max_text_chars=40))
    assert news_of(EXAMPLE_COLUMNS) is first


def test_columns_of_different_lengths_and_missing_columns_are_refused():
    body = copy.deepcopy(EXAMPLE_COLUMNS)
    body["bars"]["close"].pop()
    assert "bars columns have different lengths (timestamp 4, symbol 4, open 4, high 4, low 4, close 3, volume 4)" in (
        columns_refusal(body))
    body = copy.deepcopy(EXAMPLE_COLUMNS)
    del body["news"]["published_at"]
    with pytest.raises(ValidationError, match="published_at"):
        PredictColumnsRequest.model_validate(body)


@pytest.mark.parametrize("body", [b"", b"not arrow at all", b'{"bars": {"timestamp": []}}', b"\xff\xff\xff\xff" * 3])
def test_a_body_that_is_no_arrow_stream_is_a_request_error(body):
    assert "the body is not an Arrow IPC stream" in arrow_refusal(body)


def test_a_cut_arrow_stream_is_a_request_error():
    whole = as_arrow(EXAMPLE_COLUMNS)
    for size in (8, len(whole) // 2, len(whole) - 9):
        assert "is not an Arrow IPC stream" in arrow_refusal(whole[:size])


def test_arrow_streams_in_another_layout_are_refused_naming_the_layout():
    two_rows = pa.ipc.open_stream(as_arrow(EXAMPLE_COLUMNS)).read_all()
    two_rows = pa.concat_tables([two_rows, two_rows])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, two_rows.schema) as writer:
        writer.write_table(two_rows)
    assert "2 rows; it needs one row (the request)" in arrow_refusal(sink.getvalue().to_pybytes())
    flat = pa.table({"timestamp": [1], "symbol": ["AURX"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, flat.schema) as writer:
        writer.write_table(flat)
    assert "it needs one row (the request) with the columns ['bars', 'news', 'request_id']" in arrow_refusal(
        sink.getvalue().to_pybytes())
    bars = {**{name: [1.0] for name in ("open", "high", "low", "close", "volume")}, "symbol": [7],
            "timestamp": pa.array([0], pa.timestamp("ns", tz="UTC"))}
    ints = pa.table({"bars": pa.ListArray.from_arrays([0, 1], pa.StructArray.from_arrays(
        [pa.array(v) for v in bars.values()], names=list(bars)))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ints.schema) as writer:
        writer.write_table(ints)
    assert "the Arrow field bars.symbol is int64" in arrow_refusal(sink.getvalue().to_pybytes())


def test_rows_columns_and_arrow_give_the_same_frames_and_hash():
    rows = PredictRequest.model_validate(EXAMPLE_INPUT)
    frames = as_frames(rows)
    columns = check_columns(columns_from_json(PredictColumnsRequest.model_validate(EXAMPLE_COLUMNS)), LIMITS)
    arrow = check_columns(columns_from_arrow(arrow_body(frames.bars, frames.news, "example-1")), LIMITS)
    for other in (columns, arrow):
        pd.testing.assert_frame_equal(other.bars, frames.bars)
        pd.testing.assert_frame_equal(other.news, frames.news)
        assert other.request_id == "example-1"
        assert inputs_sha256(other) == inputs_sha256(rows)


def test_bars_in_any_order_give_the_frames_of_the_sorted_request(tiny):
    """Bars sent sorted (time, then symbol) and without a repeat are taken as the validated frame; any other order
    is sorted by the data contract: both give the same frames and hash, and a repeated bar is still refused."""
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    news = read_news(tiny.data / "news.jsonl")
    end = pd.Timestamp(np.sort(bars["timestamp"].unique())[200])
    body = columns_payload(bars, news, end, 120, STEP, "ordered")
    in_order = check_columns(columns_from_json(PredictColumnsRequest.model_validate(body)), LIMITS)
    shuffled = np.random.default_rng(0).permutation(len(body["bars"]["symbol"]))
    for order in (shuffled, np.arange(len(shuffled))[::-1]):
        other = {**body, "bars": {name: [values[i] for i in order] for name, values in body["bars"].items()}}
        frames = check_columns(columns_from_json(PredictColumnsRequest.model_validate(other)), LIMITS)
        pd.testing.assert_frame_equal(frames.bars, in_order.bars)
        assert frames.bars.attrs == in_order.bars.attrs and inputs_sha256(frames) == inputs_sha256(in_order)
    twice = {**body, "bars": {name: values[:3] + values[2:] for name, values in body["bars"].items()}}
    assert "duplicate (timestamp, symbol)" in columns_refusal(twice)


def test_the_example_columns_are_the_example_rows_and_the_schema_documents_them():
    frames = as_frames(PredictRequest.model_validate(EXAMPLE_INPUT))
    written = columns_body(frames.bars, frames.news, "example-1")
    assert inputs_sha256(check_columns(columns_from_json(PredictColumnsRequest.model_validate(written)), LIMITS)) == (
        inputs_sha256(frames))
    schema = PredictColumnsRequest.model_json_schema()
    assert schema["example"] == EXAMPLE_COLUMNS
    undocumented = [name for model in [*schema["$defs"].values(), schema] for name, prop in model["properties"].items()
                    if "description" not in prop]
    assert undocumented == []


def test_grpc_columns_carry_the_same_inputs():
    frames = check_columns(columns_from_proto(columns_to_proto(EXAMPLE_COLUMNS)), LIMITS)
    assert inputs_sha256(frames) == inputs_sha256(PredictRequest.model_validate(EXAMPLE_INPUT))
    assert frames.news["symbols"].tolist() == [["AURX"], None] and frames.request_id == "example-1"
    body = changed("bars.high", 3, 49.96)
    with pytest.raises(RequestError, match=r"bars row 3 \(BLTQ at 2026-01-05T00:06:00Z\): high 49.96"):
        check_columns(columns_from_proto(columns_to_proto(body)), LIMITS)


def test_the_arrow_layout_is_the_published_schema():
    assert pa.ipc.open_stream(as_arrow(EXAMPLE_COLUMNS)).schema.equals(ARROW_SCHEMA)


def news_window_end(bars: pd.DataFrame, news: pd.DataFrame, bars_needed: int) -> pd.Timestamp:
    """A bar a few bars after a news item, late enough for a whole window, so its window reads news."""
    times = pd.DatetimeIndex(np.sort(bars["timestamp"].unique()))
    published = pd.DatetimeIndex(news["published_at"])
    index = times.searchsorted(published[len(published) // 2])
    assert index >= bars_needed
    return times[index + 3]


def test_every_format_prepares_the_same_window_for_the_model(tiny):
    runtime = PortfolioRuntime.load(tiny.package, device="cpu", with_encoder=False)
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    news = read_news(tiny.data / "news.jsonl")
    end = news_window_end(bars, news, runtime.bars_needed)
    args = (bars, news, end, runtime.bars_needed, STEP, "formats")
    rows = PredictRequest.model_validate(predict_payload(*args))
    columns = check_columns(columns_from_json(PredictColumnsRequest.model_validate(columns_payload(*args))), LIMITS)
    arrow = check_columns(columns_from_arrow(arrow_payload(*args)), LIMITS)
    expected = runtime.prepare(rows)
    assert expected.texts  # the window has news, so their order and bars are compared too
    for frames in (columns, arrow):
        prepared = runtime.prepare(frames)
        assert prepared.as_of == expected.as_of and prepared.texts == expected.texts
        for name in ("market", "text_bars", "text_assets"):
            np.testing.assert_array_equal(getattr(prepared, name), getattr(expected, name))
        assert inputs_sha256(frames) == inputs_sha256(rows)


def test_lookback_news_only_leaves_the_prepared_window_unchanged(tiny):
    runtime = PortfolioRuntime.load(tiny.package, device="cpu", with_encoder=False)
    bars = BarFileSource(tiny.data / "bars.parquet").read()
    news = read_news(tiny.data / "news.jsonl")
    end = news_window_end(bars, news, runtime.bars_needed)
    whole = predict_payload(bars, news, end, runtime.bars_needed, STEP)
    lookback = predict_payload(bars, news, end, runtime.bars_needed, STEP, news_bars=runtime.lookback)
    assert len(lookback["news"]) < len(whole["news"])
    full, cut = (runtime.prepare(PredictRequest.model_validate(p)) for p in (whole, lookback))
    assert cut.texts == full.texts
    np.testing.assert_array_equal(cut.text_bars, full.text_bars)


# -- through `bentoml serve` (the reliability server) ----------------------------------------------------------


def post(reliable, body: dict[str, Any] | bytes, route: str = "/predict") -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(f"{reliable.url}/predict/arrow", content=body, timeout=60,
                          headers={**KEY, "content-type": ARROW_MEDIA_TYPE})
    return httpx.post(f"{reliable.url}{route}", json=body, headers=KEY, timeout=60)


def in_formats(reliable, bar: int, request_id: str) -> dict[str, dict[str, Any] | bytes]:
    """The request of one as-of bar in each format."""
    rows = reliable.payload(bar, request_id)
    frames: RequestFrames = as_frames(PredictRequest.model_validate(rows))
    return {"rows": rows, "columns": columns_body(frames.bars, frames.news, request_id),
            "arrow": arrow_body(frames.bars, frames.news, request_id)}


def offline_weights(request: pytest.FixtureRequest, tiny, version: str, payload: dict[str, Any]) -> dict[str, float]:
    """The weights of the package the server answered with, in this process: the reliability server swaps in
    SECOND_VERSION once test_reliability_swap has run."""
    package = request.getfixturevalue("second_package") if version == SECOND_VERSION else tiny.package
    runtime = PortfolioRuntime.load(package, device="cpu")
    assert runtime.version == version
    return runtime.predict_requests([PredictRequest.model_validate(payload)])[0].weights


@pytest.mark.integration
def test_every_format_is_served_the_offline_weights(reliable, tiny, request):
    for offset, form in enumerate(("rows", "columns", "arrow")):
        bar = AS_OF_BARS["formats"][offset]
        body = in_formats(reliable, bar, f"formats-{form}")[form]
        answer = post(reliable, body, "/predict/columns" if form == "columns" else "/predict")
        assert answer.status_code == 200, answer.text
        served = answer.json()
        offline = offline_weights(request, tiny, served["model_version"], reliable.payload(bar))
        assert served["request_id"] == f"formats-{form}" and not served["duplicate"]
        assert pd.Timestamp(served["as_of"]) == pd.Timestamp(reliable.times[bar])
        for symbol, weight in offline.items():
            assert abs(served["weights"][symbol] - weight) <= WEIGHTS_ATOL, (form, symbol)


@pytest.mark.integration
def test_a_repeat_in_another_format_is_a_duplicate_and_other_inputs_a_409(reliable):
    bar = AS_OF_BARS["formats"][10]
    bodies = in_formats(reliable, bar, "formats-first")
    first = post(reliable, bodies["rows"]).json()
    assert first["stored"] and not first["duplicate"], first
    for form in ("columns", "arrow"):
        again = post(reliable, in_formats(reliable, bar, f"formats-{form}-again")[form], f"/predict/{form}")
        assert again.status_code == 200, again.text
        assert again.json()["duplicate"] and again.json()["request_id"] == "formats-first"
        assert again.json()["weights"] == first["weights"]
    frames = as_frames(PredictRequest.model_validate(bodies["rows"]))
    other = frames.bars.assign(volume=frames.bars["volume"] + np.eye(len(frames.bars))[-1])  # the last bar's volume
    conflict = post(reliable, arrow_body(other, frames.news, "formats-other"))
    assert conflict.status_code == 409 and "'formats-first'" in conflict.json()["error"], conflict.text
    assert [d["request_id"] for d in reliable.documents(as_of=reliable.as_of(bar))] == ["formats-first"]


@pytest.mark.integration
def test_grpc_predict_columns_serves_the_offline_weights_and_names_a_bad_row(reliable, tiny, request):
    bar = AS_OF_BARS["formats"][30]
    body = in_formats(reliable, bar, "formats-grpc")["columns"]
    served = predict_grpc(reliable.grpc_target, body, api_key=KEY["X-API-Key"])
    offline = offline_weights(request, tiny, served.model_version, reliable.payload(bar))
    assert served.request_id == "formats-grpc" and not served.duplicate
    assert max(abs(served.weights[s] - offline[s]) for s in served.symbols) <= WEIGHTS_ATOL
    again = predict_grpc(reliable.grpc_target, in_formats(reliable, bar, "formats-grpc-2")["columns"],
                         api_key=KEY["X-API-Key"])
    assert again.duplicate and again.request_id == "formats-grpc"
    body["bars"]["volume"][5] = -2.0
    with pytest.raises(grpc.RpcError) as caught:
        predict_grpc(reliable.grpc_target, body, api_key=KEY["X-API-Key"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("bars row 5 (") and "volume -2.0 must be a finite number" in (
        caught.value.details())
    with pytest.raises(grpc.RpcError) as caught:
        predict_grpc(reliable.grpc_target, body)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.integration
def test_over_the_bar_limit_is_a_400_before_any_row_is_checked(reliable):
    n = LIMITS.max_bars + 1
    body = {"bars": {"timestamp": ["2026-01-05T00:03:00Z"] * n, "symbol": ["AURX"] * n, "open": [-1.0] * n,
                     "high": [1.0] * n, "low": [1.0] * n, "close": [1.0] * n, "volume": [1.0] * n}}
    answer = post(reliable, body, "/predict/columns")
    assert answer.status_code == 400
    assert answer.json()["error"] == (f"{n} bars are over the limit of {LIMITS.max_bars} (NFC_MAX_BARS): send only "
                                      "the model's window")


@pytest.mark.integration
def test_a_bad_row_is_a_400_naming_it_in_every_format(reliable):
    bodies = in_formats(reliable, AS_OF_BARS["formats"][20], "formats-bad")
    frames = as_frames(PredictRequest.model_validate(bodies["rows"]))
    high = frames.bars["high"].to_numpy().copy()
    high[17] = frames.bars["low"].iat[17]  # below open or close
    bad = frames.bars.assign(high=high)
    symbol, at = bad["symbol"].iat[17], bad["timestamp"].iat[17].isoformat().replace("+00:00", "Z")
    for body, route in ((columns_body(bad, frames.news), "/predict/columns"), (arrow_body(bad, frames.news), "")):
        answer = post(reliable, body, route)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"].startswith(f"bars row 17 ({symbol} at {at}): high "), answer.text
    assert reliable.documents(as_of=reliable.as_of(AS_OF_BARS["formats"][20])) == []


@pytest.mark.integration
@pytest.mark.parametrize("body", [b"", b"\x00" * 64, json.dumps(EXAMPLE_COLUMNS).encode(), b"\xff\xff\xff\xff\x10"])
def test_a_malformed_arrow_body_is_a_400_saying_what_to_send(reliable, body):
    answer = post(reliable, body)
    assert answer.status_code == 400, answer.text
    assert "the body is not an Arrow IPC stream" in answer.json()["error"]
    assert "serving.columns.ARROW_SCHEMA" in answer.json()["error"]


@pytest.mark.integration
def test_the_openapi_publishes_both_columnar_routes(reliable):
    spec = httpx.get(f"{reliable.url}/docs.json", headers=KEY, timeout=30).json()
    columns = spec["paths"]["/predict/columns"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert columns["example"] == EXAMPLE_COLUMNS and set(columns["properties"]) == {"bars", "news", "request_id"}
    arrow = spec["paths"]["/predict/arrow"]["post"]["requestBody"]["content"]
    assert list(arrow) == [ARROW_MEDIA_TYPE] and arrow[ARROW_MEDIA_TYPE]["schema"]["format"] == "binary"
