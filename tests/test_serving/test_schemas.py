"""HTTP request/response models (serving.schemas), their protobuf conversions (serving.proto_convert) and the
checks against the served model (serving.request_checks)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from google.protobuf import json_format
from pydantic import ValidationError

from serving.client import request_to_proto
from serving.column_checks import check_columns
from serving.errors import RequestError
from serving.proto import neuralfusion_pb2 as pb
from serving.proto_convert import (
    columns_from_request_proto,
    history_query_from_proto,
    history_to_proto,
    prediction_from_proto,
    prediction_to_proto,
    timestamp,
)
from serving.request_checks import check_as_of, check_request_against_model, inputs_sha256, request_frames
from serving.schemas import (
    EXAMPLE_INPUT,
    HistoryOut,
    HistoryQuery,
    NewsIn,
    PredictionOut,
    PredictRequest,
    RequestLimits,
)
from serving.store import PredictionRecord

SYMBOLS = ("AURX", "BLTQ")
STEP = pd.Timedelta("3min")
T0 = pd.Timestamp("2026-01-05 00:03", tz="UTC")


def example(**changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(EXAMPLE_INPUT)
    payload.update(changes)
    return payload


def bar(symbol: str = "AURX", at: pd.Timestamp = T0, **prices: float) -> dict[str, Any]:
    return {"timestamp": at.isoformat(), "symbol": symbol, "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5,
            "volume": 10.0, **prices}


def grid_bars(n_bars: int, symbols: tuple[str, ...] = SYMBOLS, start: pd.Timestamp = T0) -> list[dict[str, Any]]:
    return [bar(s, start + i * STEP) for i in range(n_bars) for s in symbols]


def refusal(payload: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        PredictRequest.model_validate(payload, **kwargs)
    return str(caught.value)


def rows_refusal(payload: dict[str, Any]) -> str:
    """Why /predict refuses a body: its model, or the array checks every body passes (the bar times and high/low)."""
    with pytest.raises((ValidationError, RequestError)) as caught:
        request_frames(PredictRequest.model_validate(payload))
    return str(caught.value)


def test_example_input_is_a_valid_request_for_a_two_bar_model() -> None:
    request = PredictRequest.model_validate(EXAMPLE_INPUT)
    bars, news = check_request_against_model(request, SYMBOLS, bars_needed=2, interval=STEP)
    assert len(bars) == 4 and len(news) == 2


def test_json_schema_documents_every_field_with_the_example() -> None:
    schema = PredictRequest.model_json_schema()
    assert schema["example"] == EXAMPLE_INPUT
    models = [*schema["$defs"].values(), schema, PredictionOut.model_json_schema(), HistoryOut.model_json_schema()]
    undocumented = [name for model in models for name, prop in model["properties"].items()
                    if "description" not in prop]
    assert undocumented == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("field", ["open", "high", "low", "close", "volume"])
def test_non_finite_numbers_are_refused(field: str, value: float) -> None:
    message = refusal(example(bars=[bar(**{field: value})]))
    assert f"bars.0.{field}" in message and "finite number" in message


def test_non_finite_numbers_in_json_are_refused() -> None:
    body = json.dumps(example(bars=[bar(close=float("nan"))]))  # Python writes the non-standard token NaN
    with pytest.raises(ValidationError, match="finite number"):
        PredictRequest.model_validate_json(body)


@pytest.mark.parametrize("price", [0.0, -1.0])
def test_non_positive_prices_are_refused(price: float) -> None:
    assert "greater than 0" in refusal(example(bars=[bar(low=price)]))


@pytest.mark.parametrize("prices", [{"high": 100.2}, {"low": 100.4}])
def test_high_and_low_must_bound_open_and_close(prices: dict[str, float]) -> None:
    PredictRequest.model_validate(example(bars=[bar(**prices)]))  # an array rule: no object per bar checks it
    assert "bars row 0 (AURX at 2026-01-05T00:03:00Z): high" in rows_refusal(example(bars=[bar(**prices)]))
    assert "must bound open 100.0 and close 100.5" in rows_refusal(example(bars=[bar(**prices)]))


def test_negative_volume_is_refused() -> None:
    assert "bars.0.volume" in refusal(example(bars=[bar(volume=-1.0)]))


def test_naive_timestamps_are_refused_with_the_fix() -> None:
    bars_message = rows_refusal(example(bars=[{**bar(), "timestamp": "2026-01-05T00:03:00"}]))
    news = [{**EXAMPLE_INPUT["news"][0], "published_at": "2026-01-05T00:04:41"}]
    news_message = refusal(example(news=news))
    for message in (bars_message, news_message):
        assert "has no time zone; write ISO 8601 with an offset" in message


def test_remembered_times_do_not_hide_a_bad_time_beside_them() -> None:
    """Bar times a process has checked are remembered (column_checks' memo); a request mixing remembered times with
    a new bad one is still refused, naming the bad one's own row, and a good request after it reads the same times."""
    good = grid_bars(3)
    first, _ = request_frames(PredictRequest.model_validate(example(bars=good)))
    late = [*good, {**bar("AURX", T0 + 3 * STEP), "timestamp": "2026-01-05T00:12:00"},
            {**bar("BLTQ", T0 + 3 * STEP), "timestamp": "2026-01-05T00:12:00"}]
    message = rows_refusal(example(bars=late))
    assert "bars row 6 (AURX): timestamp '2026-01-05T00:12:00' has no time zone" in message
    assert "(2 rows in all)" in message
    beyond = [*good, {**bar("AURX", T0 + 3 * STEP), "timestamp": "2300-01-05T00:12:00Z"}]
    assert "bars row 6 (AURX): timestamp 2300-01-05T00:12:00Z is outside" in rows_refusal(example(bars=beyond))
    again, _ = request_frames(PredictRequest.model_validate(example(bars=good)))
    pd.testing.assert_frame_equal(again, first)
    assert list(again["timestamp"].unique()) == [T0 + i * STEP for i in range(3)]


def test_offsets_are_converted_to_utc() -> None:
    item = NewsIn.model_validate({"id": "n", "published_at": "2026-01-05T01:04:41+01:00", "title": "t"})
    assert item.published_at == datetime(2026, 1, 5, 0, 4, 41, tzinfo=UTC)


@pytest.mark.parametrize("text", [{"title": "", "body": ""}, {"title": "  ", "body": "\n"}, {}])
def test_news_without_text_is_refused(text: dict[str, str]) -> None:
    item = {"id": "n9", "published_at": "2026-01-05T00:04:41Z", **text}
    assert "news item 'n9' has no text" in refusal(example(news=[item]))


def test_unknown_fields_are_refused() -> None:
    assert "Extra inputs are not permitted" in refusal(example(bars=[{**bar(), "price": 1.0}]))


def test_empty_bars_are_refused() -> None:
    assert "bars" in refusal(example(bars=[]))


@pytest.mark.parametrize(("limits", "payload", "expected"), [
    (RequestLimits(max_bars=3), example(), "4 bars are over the limit of 3 (NFC_MAX_BARS)"),
    (RequestLimits(max_news=1), example(), "2 news items are over the limit of 1 (NFC_MAX_NEWS)"),
    (RequestLimits(max_text_chars=40), example(), "news[0] (id 'n000001') has 68 characters of text, over the limit"),
])
def test_size_limits_from_the_context(limits: RequestLimits, payload: dict[str, Any], expected: str) -> None:
    assert expected in refusal(payload, context={"limits": limits})


def test_size_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    long_news = example(news=[{**EXAMPLE_INPUT["news"][0], "body": "x" * 1000}])
    PredictRequest.model_validate(long_news)
    monkeypatch.setenv("NFC_MAX_TEXT_CHARS", "1000")
    assert "over the limit of 1000 (NFC_MAX_TEXT_CHARS)" in refusal(long_news)


def test_default_limits_refuse_oversize_requests() -> None:
    assert "over the limit of 20000 (NFC_MAX_BARS)" in refusal(example(bars=grid_bars(10_001)))
    news = [{"id": f"n{i}", "published_at": "2026-01-05T00:04:41Z", "title": "t"} for i in range(513)]
    assert "over the limit of 512 (NFC_MAX_NEWS)" in refusal(example(news=news))


@pytest.mark.parametrize("raw", ["0", "-5", "ten", ""])
def test_request_limits_from_env_refuse_bad_values(raw: str) -> None:
    with pytest.raises(ValueError, match=r"NFC_MAX_BARS=.* must be a positive integer"):
        RequestLimits.from_env({"NFC_MAX_BARS": raw})


def test_request_limits_from_env_read_each_variable() -> None:
    env = {"NFC_MAX_BARS": "10", "NFC_MAX_NEWS": "2", "NFC_MAX_TEXT_CHARS": "300"}
    assert RequestLimits.from_env(env) == RequestLimits(max_bars=10, max_news=2, max_text_chars=300)
    assert RequestLimits.from_env({}) == RequestLimits()


@pytest.mark.parametrize("when", ["2300-01-05T00:03:00Z", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z",
                                  "1969-12-31T23:59:59Z", "9999-12-31T23:59:00-14:00"])
def test_times_outside_1970_to_2200_are_refused_before_pandas_sees_them(when: str) -> None:
    for payload in (example(bars=[{**EXAMPLE_INPUT["bars"][0], "timestamp": when}]),
                    example(news=[{**EXAMPLE_INPUT["news"][0], "published_at": when}])):
        assert "is outside 1970-01-01T00:00:00+00:00 .. 2200-01-01T00:00:00+00:00" in rows_refusal(payload)
    with pytest.raises(ValidationError, match="is outside"):
        HistoryQuery.model_validate({"end": when})


def test_string_and_list_sizes_are_capped_before_mongodb() -> None:
    assert "at most 128 characters" in refusal(example(request_id="r" * 129))
    assert "at least 1 character" in refusal(example(request_id=""))
    with pytest.raises(ValidationError, match="at most 128 characters"):
        HistoryQuery.model_validate({"model_version": "v" * 129})
    many = [{**EXAMPLE_INPUT["news"][0], "symbols": ["AURX"] * 65}]
    assert "at most 64 items" in refusal(example(news=many))


def test_the_default_body_limit_fits_the_largest_request_the_limits_allow() -> None:
    limits = RequestLimits()
    largest = example(
        bars=[{**EXAMPLE_INPUT["bars"][0], "symbol": "S" * 32, "open": 123456.789012, "high": 123456.789012,
               "low": 123456.789012, "close": 123456.789012, "volume": 1.23456789e15}] * limits.max_bars,
        news=[{**EXAMPLE_INPUT["news"][0], "id": "i" * 128, "title": "", "body": "\u00e9" * limits.max_text_chars,
               "symbols": ["S" * 32] * 64}] * limits.max_news, request_id="r" * 128)
    size = len(json.dumps(largest, ensure_ascii=False).encode())
    assert size <= limits.max_body_bytes < 2 * size, (size, limits.max_body_bytes)


def test_the_as_of_may_be_at_most_lead_bars_after_now() -> None:
    request = PredictRequest.model_validate(EXAMPLE_INPUT)  # last bar 2026-01-05T00:06Z
    now = datetime(2026, 1, 5, 0, 3, tzinfo=UTC)
    check_as_of(request, STEP, 1, now)
    with pytest.raises(RequestError, match=r"after now plus 1 bar\(s\) \(2026-01-05T00:03:00\+00:00"):
        check_as_of(request, STEP, 1, now - STEP)


def test_the_inputs_hash_ignores_order_time_zones_and_request_id_but_not_values() -> None:
    base = inputs_sha256(PredictRequest.model_validate(EXAMPLE_INPUT))
    reordered = example(bars=EXAMPLE_INPUT["bars"][::-1], news=EXAMPLE_INPUT["news"][::-1], request_id="other")
    reordered["bars"][0]["timestamp"] = "2026-01-05T01:06:00+01:00"  # the same instant
    assert inputs_sha256(PredictRequest.model_validate(reordered)) == base
    for changed in (example(bars=[{**EXAMPLE_INPUT["bars"][0], "volume": 5124.0}, *EXAMPLE_INPUT["bars"][1:]]),
                    example(news=EXAMPLE_INPUT["news"][:1])):
        assert inputs_sha256(PredictRequest.model_validate(changed)) != base


def test_request_frames_follow_the_data_contract() -> None:
    bars, news = request_frames(PredictRequest.model_validate(EXAMPLE_INPUT))
    assert list(bars.columns) == ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    assert str(bars["timestamp"].dt.tz) == "UTC" and bars["close"].dtype == "float64"
    assert list(news["id"]) == ["n000001", "n000002"]  # sorted by published_at
    assert news["symbols"].tolist() == [["AURX"], None]
    assert str(news["published_at"].dt.tz) == "UTC"


def test_request_without_news_gives_an_empty_utc_news_frame() -> None:
    _, news = request_frames(PredictRequest.model_validate(example(news=[])))
    assert news.empty and str(news["published_at"].dt.tz) == "UTC"


def test_duplicate_bars_are_a_request_error_from_validate_bars() -> None:
    request = PredictRequest.model_validate(example(bars=[bar(), bar(close=100.2)]))
    with pytest.raises(RequestError, match=r"request bars: row 1: duplicate \(timestamp, symbol\)"):
        request_frames(request)


def test_duplicate_news_ids_are_a_request_error_from_validate_news() -> None:
    item = EXAMPLE_INPUT["news"][0]
    request = PredictRequest.model_validate(example(news=[item, item]))
    with pytest.raises(RequestError, match="request news: row 1: duplicate news id 'n000001'"):
        request_frames(request)


def test_unknown_symbols_are_refused() -> None:
    request = PredictRequest.model_validate(example(bars=grid_bars(2, (*SYMBOLS, "ZZZZ"))))
    with pytest.raises(RequestError, match=r"bars for symbols \['ZZZZ'\] that this model does not trade"):
        check_request_against_model(request, SYMBOLS, bars_needed=2, interval=STEP)


def test_missing_symbols_are_refused() -> None:
    request = PredictRequest.model_validate(example(bars=grid_bars(2, ("AURX",))))
    with pytest.raises(RequestError, match=r"no bars for symbols \['BLTQ'\]"):
        check_request_against_model(request, SYMBOLS, bars_needed=2, interval=STEP)


def test_too_few_bars_name_the_short_symbols_and_the_window() -> None:
    bars = grid_bars(10, ("AURX",)) + grid_bars(6, ("BLTQ",), start=T0 + 4 * STEP)
    request = PredictRequest.model_validate(example(bars=bars))
    check_request_against_model(request, SYMBOLS, bars_needed=6, interval=STEP)
    with pytest.raises(RequestError, match=r"reads 8 bars of 3min per symbol, from "
                                           r"2026-01-05T00:09:00\+00:00 .*BLTQ has 6 from 2026-01-05T00:15"):
        check_request_against_model(request, SYMBOLS, bars_needed=8, interval=STEP)


def test_finer_bars_count_by_grid_bar() -> None:
    one_minute = [bar(s, T0 - 2 * STEP + i * pd.Timedelta("1min")) for i in range(1, 10) for s in SYMBOLS]
    request = PredictRequest.model_validate(example(bars=one_minute))  # 9 one-minute bars: 3 grid bars
    check_request_against_model(request, SYMBOLS, bars_needed=3, interval=STEP)
    with pytest.raises(RequestError, match="AURX has 3 from"):
        check_request_against_model(request, SYMBOLS, bars_needed=4, interval=STEP)


def test_last_bar_off_the_grid_is_refused() -> None:
    request = PredictRequest.model_validate(example(bars=grid_bars(3, start=T0 + pd.Timedelta("1min"))))
    with pytest.raises(RequestError, match=r"not on the 3min bar grid.*end the bars at "
                                           r"2026-01-05T00:09:00\+00:00"):
        check_request_against_model(request, SYMBOLS, bars_needed=2, interval=STEP)


def test_proto_request_reads_as_the_json_rows_do() -> None:
    from_proto = check_columns(columns_from_request_proto(request_to_proto(EXAMPLE_INPUT)), RequestLimits())
    from_json = request_frames(PredictRequest.model_validate(EXAMPLE_INPUT))
    pd.testing.assert_frame_equal(from_proto.bars, from_json[0])
    pd.testing.assert_frame_equal(from_proto.news, from_json[1])
    assert inputs_sha256(from_proto) == inputs_sha256(PredictRequest.model_validate(EXAMPLE_INPUT))


def test_proto_empty_strings_mean_unset() -> None:
    columns = columns_from_request_proto(request_to_proto(example(request_id=None)))
    assert columns.request_id is None
    assert columns.news["symbols"][1] is None  # has_symbols=false: match aliases


@pytest.mark.parametrize(("changed", "expected"), [
    ({"high": float("nan")}, r"^bars row 0 \(AURX at 2026-01-05T00:03:00Z\): high nan must be a finite number > 0$"),
    ({"high": 100.2}, r"^bars row 0 \(AURX at 2026-01-05T00:03:00Z\): high 100.2 and low 99.0 must bound"),
])
def test_proto_request_errors_are_the_array_checks_errors(changed: dict[str, float], expected: str) -> None:
    with pytest.raises(RequestError, match=expected):
        check_columns(columns_from_request_proto(request_to_proto(example(bars=[bar(**changed)]))), RequestLimits())


def test_proto_and_json_rows_are_refused_in_the_same_words() -> None:
    body = example(bars=[bar(high=100.2)])
    with pytest.raises(RequestError) as caught:
        check_columns(columns_from_request_proto(request_to_proto(body)), RequestLimits())
    assert str(caught.value) == rows_refusal(body)


def test_proto_request_without_a_time_is_refused_naming_the_row() -> None:
    message = request_to_proto(EXAMPLE_INPUT)
    message.bars[2].ClearField("timestamp")
    with pytest.raises(RequestError, match=r"^bars row 2 \(AURX\): timestamp is missing$"):
        columns_from_request_proto(message)


@pytest.mark.parametrize("seconds", [-(2**62), 2**62, 365 * 86400 * 300])
def test_proto_times_far_outside_the_range_are_refused_not_overflowed(seconds: int) -> None:
    message = request_to_proto(EXAMPLE_INPUT)
    message.bars[0].timestamp.seconds = seconds
    with pytest.raises(RequestError, match=r"^bars row 0 \(AURX\): timestamp .* is outside 1970"):
        check_columns(columns_from_request_proto(message), RequestLimits())


def test_proto_request_honours_the_limits() -> None:
    with pytest.raises(RequestError, match=r"^4 bars are over the limit of 2"):
        check_columns(columns_from_request_proto(request_to_proto(EXAMPLE_INPUT)), RequestLimits(max_bars=2))


def prediction() -> PredictionOut:
    record = PredictionRecord(model_version="v1", as_of=T0.to_pydatetime(), symbols=("BLTQ", "AURX"),
                              weights={"AURX": 0.25, "BLTQ": 0.75}, logits={"AURX": -0.5, "BLTQ": 1.5},
                              horizon_bars=80, request_id="r-1")
    return PredictionOut.from_record(record)


def test_prediction_from_record_keeps_model_order() -> None:
    out = prediction()
    assert out.symbols == ["BLTQ", "AURX"] and out.stored
    assert json.loads(out.model_dump_json())["as_of"] == "2026-01-05T00:03:00Z"


def test_prediction_proto_has_the_http_shape_and_round_trips() -> None:
    message = prediction_to_proto(prediction())
    assert list(message.symbols) == ["BLTQ", "AURX"] and message.as_of.ToJsonString() == "2026-01-05T00:03:00Z"
    assert dict(message.weights) == {"AURX": 0.25, "BLTQ": 0.75} and dict(message.logits) == {"AURX": -0.5, "BLTQ": 1.5}
    as_json = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
    http = json.loads(prediction().model_dump_json())
    assert as_json == {k: v for k, v in http.items() if v is not False}  # proto3 JSON leaves out false
    assert prediction_from_proto(pb.Prediction.FromString(message.SerializeToString())) == prediction()


def test_history_proto_marks_the_last_page_with_an_empty_cursor() -> None:
    last = history_to_proto(HistoryOut(items=[prediction()], next_before=None))
    more = history_to_proto(HistoryOut(items=[prediction()], next_before=T0.to_pydatetime()))
    assert not last.HasField("next_before") and len(last.items) == 1
    assert more.next_before.ToDatetime(tzinfo=UTC) == T0


def test_history_query_from_proto_reads_empty_fields_as_not_given() -> None:
    query = history_query_from_proto(pb.HistoryRequest(start=timestamp(T0.to_pydatetime() - STEP)))
    assert query.start == T0.to_pydatetime() - STEP and query.end is None and query.limit == 100
    with pytest.raises(RequestError, match="limit: Input should be less than or equal to 1000"):
        history_query_from_proto(pb.HistoryRequest(limit=5000))


def test_serving_foundations_import_neither_torch_nor_training() -> None:
    code = ("import sys, serving.schemas, serving.store, serving.proto.neuralfusion_pb2_grpc, serving.runtime, "
            "serving.service, serving.grpc_server, serving.predict_job, serving.settings, serving.errors, "
            "serving.middleware, serving.model_swap, serving.request_checks, serving.proto_convert; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
