"""neuralfusion.client without a server: what it refuses before sending, how long it waits between attempts, and
what it raises when nothing answers (a closed loopback port). Against a served model:
tests/test_serving/test_api_contract.py."""

from __future__ import annotations

import asyncio
import email.utils
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from neuralfusion.client import AsyncClient, Client, RetryPolicy, ServiceUnavailable
from nfc.embedded_mongo import free_port

BAR = {"timestamp": pd.Timestamp("2026-01-05 00:03", tz="UTC"), "symbol": "AURX", "open": 100.0, "high": 100.2,
       "low": 99.9, "close": 100.1, "volume": 5.0}


def test_backoff_doubles_up_to_its_cap_and_retry_after_wins():
    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=3.0, max_retry_after_s=60)
    assert [policy.delay(attempt, None) for attempt in range(4)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.delay(0, "2") == 2.0 and policy.delay(3, "0") == 0.0
    assert policy.delay(0, "3600") == 60  # a server asking for an hour is capped
    in_ten = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8 <= policy.delay(0, in_ten) <= 10
    assert policy.delay(1, "soon") == 1.0  # unreadable: the backoff
    with pytest.raises(ValueError, match="must be >= 0"):
        RetryPolicy(retries=-1)


def test_bad_frames_are_refused_before_anything_is_sent():
    closed = f"http://127.0.0.1:{free_port()}"
    with Client(closed, retries=0) as client:
        for naive in (datetime(2026, 1, 5, 0, 3), "2026-01-05T00:03:00"):
            with pytest.raises(ValueError, match="has no time zone"):
                client.predict([{**BAR, "timestamp": naive}])
        with pytest.raises(ValueError, match=r"bars\[0\] has no volume"):
            client.predict(pd.DataFrame([BAR]).drop(columns="volume"))
        with pytest.raises(ValueError, match=r"page_size=5000 must be within 1\.\.1000"):
            next(client.history(page_size=5000))


def test_no_answer_is_retried_then_service_unavailable():
    closed = f"http://127.0.0.1:{free_port()}"
    with Client(closed, retries=2, backoff_s=0) as client, pytest.raises(ServiceUnavailable) as sync:
        client.latest()
    assert sync.value.status is None and "after 3 attempts: ConnectError" in sync.value.message

    async def latest() -> None:
        async with AsyncClient(closed, retries=1, backoff_s=0) as client:
            await client.latest()

    with pytest.raises(ServiceUnavailable, match="after 2 attempts: ConnectError"):
        asyncio.run(latest())
