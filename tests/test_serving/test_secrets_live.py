"""Passwords holding '/', '?', '#', '@', ':' against the real servers: each connects with it, and no error, log
line or `nfc serve` output shows it (before, MongoDB's InvalidURI quoted the whole URI and `nfc serve`
restarted its workers in a loop that logged the password 16 times)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest
import redis
from live_servers import CLICKHOUSE_PASSWORD, MONGO_PASSWORD, REDIS_PASSWORD
from serving_servers import distinct_free_ports, serve_env

from neuralfusion.data.clickhouse import ClickHouseBarSource
from neuralfusion.errors import DataError
from neuralfusion.redact import encode_userinfo
from serving.publish import PublishError, RedisPublisher
from serving.store import PredictionRecord, PredictionStore, StoreError

SYMBOLS = ("AAA", "BBB", "CCC")
WRONG = "wr/ong?pa#ss@w:0rd"


def record(hour: int) -> PredictionRecord:
    return PredictionRecord(model_version="v-secret", as_of=datetime(2026, 3, 5, hour, tzinfo=UTC), symbols=SYMBOLS,
                            weights={"AAA": 0.5, "BBB": 0.5, "CCC": 0.0}, logits=dict.fromkeys(SYMBOLS, 0.0),
                            horizon_bars=8, request_id=f"secret-{hour}")


def hidden(text: str, *secrets: str) -> bool:
    """None of `secrets` in any spelling (as written, percent-encoded) is in `text`."""
    return not any(s in text or encode_userinfo(f"x://u:{s}@h").split("@")[0][6:] in text for s in secrets)


def test_redis_password_with_any_character_authenticates_and_never_shows(redis_password_url):
    publisher = RedisPublisher(redis_password_url, key="nfc:test:secret", channel=None)
    try:
        assert publisher.publish(record(12)).status == "published"
    finally:
        publisher.close()
    with redis.Redis.from_url(encode_userinfo(redis_password_url)) as client:
        assert json.loads(client.get("nfc:test:secret"))["request_id"] == "secret-12"
    wrong = RedisPublisher(redis_password_url.replace(REDIS_PASSWORD, WRONG), key="nfc:test:secret", channel=None)
    with pytest.raises(PublishError) as caught:
        wrong.publish(record(13))
    message = str(caught.value)
    assert "redis://:***@127.0.0.1" in message and hidden(message, WRONG, REDIS_PASSWORD)


def test_clickhouse_password_with_any_character_connects_and_never_shows(clickhouse_server):
    with ClickHouseBarSource.from_url(clickhouse_server.url, table="system.one") as source:
        assert source.client.execute("SELECT 1") == [(1,)]
    wrong = clickhouse_server.url.replace(CLICKHOUSE_PASSWORD, WRONG)
    start = datetime(2026, 3, 5, tzinfo=UTC)
    with pytest.raises(DataError) as caught, ClickHouseBarSource.from_url(wrong, table="market.candles") as source:
        source.load(list(SYMBOLS), start.replace(hour=1), start.replace(hour=2))
    assert "query failed" in str(caught.value) and hidden(str(caught.value), WRONG, CLICKHOUSE_PASSWORD)
    bad_port = clickhouse_server.url.replace(f":{clickhouse_server.port}/", ":port/")
    with pytest.raises(ValueError, match=r"invalid ClickHouse URL clickhouse://nfc:\*\*\*@127.0.0.1:port") as caught:
        ClickHouseBarSource.from_url(bad_port, table="market.candles")
    assert hidden(str(caught.value), CLICKHOUSE_PASSWORD)


def test_mongo_password_with_any_character_is_parsed_and_never_shows(mongo_uri, caplog):
    """nx-27017 has no authentication, so the login fails: the error must say so without the password."""
    uri = mongo_uri.replace("mongodb://", f"mongodb://nfc:{MONGO_PASSWORD}@")

    async def ping(target: str) -> None:
        async with PredictionStore(target, server_selection_timeout_ms=1000) as store:
            await store.ping()

    with pytest.raises(StoreError) as caught:
        asyncio.run(ping(uri))
    # the error may reach an API caller: it names the operation, not the server; the log names it, redacted
    assert "127.0.0.1" not in str(caught.value) and hidden(str(caught.value), MONGO_PASSWORD)
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "mongodb://nfc:***@127.0.0.1" in logged and hidden(logged, MONGO_PASSWORD)
    with pytest.raises(ValueError, match=r"invalid MongoDB URI or options for mongodb://nfc:\*\*\*@") as caught:
        asyncio.run(ping(uri + "?authSource"))
    assert hidden(str(caught.value), MONGO_PASSWORD)


def test_nfc_serve_refuses_an_unparsable_mongo_uri_at_once_without_the_password(tiny, mongo_uri, tmp_path):
    uri = mongo_uri.replace("mongodb://", f"mongodb://nfc:{MONGO_PASSWORD}@") + "?authSource"
    result = subprocess.run([sys.executable, "-m", "nfc.cli", "serve", "--model-path", str(tiny.package), "--host",
                             "127.0.0.1", "--port", str(distinct_free_ports(1)[0]), "--grpc-port", "0"],
                            env=serve_env(tmp_path, NFC_MONGO_URI=uri), cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "NFC_MONGO_URI=mongodb://nfc:***@127.0.0.1" in output, output[-2000:]
    assert hidden(output, MONGO_PASSWORD)


def test_nfc_serve_with_a_password_uri_stays_up_unready_without_a_restart_loop(tiny, mongo_uri, tmp_path):
    """The URI parses now; the login fails (nx-27017 has no auth): the service must stay up and not ready,
    say why once per worker, and never print the password."""
    (port,) = distinct_free_ports(1)
    uri = mongo_uri.replace("mongodb://", f"mongodb://nfc:{MONGO_PASSWORD}@")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nfc.cli", "serve", "--model-path", str(tiny.package), "--host", "127.0.0.1",
             "--port", str(port), "--grpc-port", "0"],
            env=serve_env(tmp_path, NFC_MONGO_URI=uri, NFC_MONGO_TIMEOUT_MS="500"), cwd=tmp_path, stdout=out,
            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _answers(f"{url}/livez"):
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(1)
        time.sleep(5)  # a worker crashing at startup would have been restarted by now
        assert process.poll() is None and httpx.get(f"{url}/readyz", timeout=10).status_code != 200
        answer = httpx.get(f"{url}/latest", timeout=30)
        assert answer.status_code == 503 and hidden(answer.text, MONGO_PASSWORD)
    finally:
        process.terminate()
        process.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert hidden(text, MONGO_PASSWORD), "the password is in nfc serve's output"
    assert text.count("MongoDB is not reachable yet") == 1, text[-3000:]  # one worker, started once
    assert "mongodb://nfc:***@127.0.0.1" in text


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
