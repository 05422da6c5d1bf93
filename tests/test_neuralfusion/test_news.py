"""News contract: files and MongoDB read into one validated frame; bad items are named."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pymongo
import pytest
from builders import make_news

from neuralfusion.data.news import MongoNewsSource, NewsFieldMap, article_text, read_news, validate_news
from neuralfusion.errors import DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def records(n=3):
    return [{"id": f"a{i}", "published_at": f"2026-01-05T00:0{i}:30Z", "title": f"Title {i}",
             "body": f"Body {i}", "symbols": ["AAA"]} for i in range(n)]


def test_jsonl_and_parquet_read_the_same(tmp_path):
    write_jsonl(tmp_path / "news.jsonl", records())
    from_jsonl = read_news(tmp_path / "news.jsonl")
    from_jsonl.to_parquet(tmp_path / "news.parquet")
    from_parquet = read_news(tmp_path / "news.parquet")
    assert list(from_parquet["id"]) == ["a0", "a1", "a2"]
    assert str(from_jsonl["published_at"].dt.tz) == "UTC"
    assert [list(s) for s in from_parquet["symbols"]] == [["AAA"]] * 3


def test_body_and_symbols_are_optional():
    frame = validate_news(pd.DataFrame([{"id": 1, "published_at": "2026-01-05T00:00:00+01:00",
                                         "title": "Only a title"}]), source="x")
    assert frame["body"].iat[0] == "" and frame["symbols"].iat[0] is None
    assert frame["published_at"].iat[0] == pd.Timestamp("2026-01-04 23:00", tz="UTC")
    assert article_text("  Title ", "") == "Title"


@pytest.mark.parametrize(("change", "message"), [
    ({"title": "", "body": "  "}, "empty news text"),
    ({"title": 42}, "'title' must be text, got int"),
    ({"published_at": None}, "every record needs a timestamp"),
    ({"published_at": "2026-01-05 00:01:00"}, "has no time zone"),
    ({"symbols": "AAA"}, "'symbols' must be a list of tickers"),
])
def test_bad_items_are_refused_naming_file_and_row(tmp_path, change, message):
    items = records()
    items[1].update(change)
    write_jsonl(tmp_path / "news.jsonl", items)
    with pytest.raises(DataError, match=message) as err:
        read_news(tmp_path / "news.jsonl")
    assert f"{tmp_path / 'news.jsonl'}: row 1" in str(err.value)


def test_missing_timestamp_field_and_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"missing fields \['published_at'\]"):
        validate_news(pd.DataFrame([{"id": "a", "title": "t"}]), source="x")
    items = records()
    items[2]["id"] = "a0"
    write_jsonl(tmp_path / "news.jsonl", items)
    with pytest.raises(DataError, match="duplicate news id 'a0'"):
        read_news(tmp_path / "news.jsonl")


def test_invalid_json_line_is_named(tmp_path):
    (tmp_path / "news.jsonl").write_text(json.dumps(records(1)[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="row 1: invalid JSON"):
        read_news(tmp_path / "news.jsonl")


@pytest.mark.mongo
def test_mongo_source_maps_seed_fields_and_loads_incrementally(mongo_uri):
    client = pymongo.MongoClient(mongo_uri)
    collection = client["nfc_test_news"]["news"]
    collection.drop()
    news = make_news(n_items=10)
    collection.insert_many([
        {"_id": row.id, "releasedAt": row.published_at.to_pydatetime(), "title": row.title,
         "content": row.body, "assets": [{"symbol": s} for s in row.symbols]}
        for row in news.itertuples()])
    source = MongoNewsSource(collection, NewsFieldMap())
    source.ensure_index()
    everything = source.load()
    assert list(everything["id"]) == list(news["id"])
    assert (everything["published_at"] == news["published_at"]).all()
    assert [list(s) for s in everything["symbols"]] == [list(s) for s in news["symbols"]]
    cut = news["published_at"].iat[5]
    newer = source.load(start=cut)
    assert list(newer["id"]) == list(news["id"][6:])
    assert source.load(start=cut, end=cut).empty
    client.close()


@pytest.mark.mongo
def test_mongo_source_refuses_documents_without_text(mongo_uri):
    client = pymongo.MongoClient(mongo_uri)
    collection = client["nfc_test_news"]["bad"]
    collection.drop()
    collection.insert_one({"_id": "x1", "releasedAt": datetime(2026, 1, 5, tzinfo=UTC), "title": ""})
    with pytest.raises(DataError, match=r"mongodb collection 'nfc_test_news.bad': row 0: empty news text"):
        MongoNewsSource(collection).load()
    client.close()
