"""Fault: the MongoDB server is killed (SIGKILL, by pid) in the middle of a load run and restarted on the same
port with the same data folder a few seconds later. Every answer is a 200 that MongoDB holds exactly once, as
answered, or a 503 that says MongoDB is unavailable and to retry; nothing hangs past a bound; afterwards the
same service process (never restarted) is ready again and stores new predictions."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pandas as pd
import pytest
from serving_servers import AS_OF_BARS, KEY, Answer, Load

pytestmark = pytest.mark.integration

REQUESTS = 120
CONCURRENCY = 16
DOWN_S = 4.0  # how long MongoDB stays down
ANSWER_BOUND_S = 30.0  # no request may wait longer than this for its answer, down or not
RECOVERY_BOUND_S = 30.0


def test_mongodb_killed_mid_load_gives_stored_200s_or_clear_503s_and_the_service_recovers(reliable):
    bars = list(AS_OF_BARS["fault"])[:REQUESTS]
    after_restart = list(AS_OF_BARS["fault"])[-5:]
    pid = reliable.process.pid
    load = Load(f"{reliable.url}/predict", [reliable.payload(bar, f"fault-{bar}") for bar in bars], CONCURRENCY,
                bound_s=300, request_timeout_s=ANSWER_BOUND_S)
    answers: list[Answer] = []
    runner = threading.Thread(target=lambda: answers.extend(load.run()))
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while load.done < len(bars) // 4 and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.is_alive(), "the load ended before MongoDB could be stopped"
        assert reliable.mongo is not None and reliable.mongo.process is not None
        os.kill(reliable.mongo.process.pid, signal.SIGKILL)
        killed_at = load.done
        time.sleep(DOWN_S)
        restarted_at = load.done
    finally:
        reliable.mongo.stop()  # reaps the killed process
        reliable.mongo.start()  # same port, same data folder
        runner.join(timeout=300)
    assert not runner.is_alive() and len(answers) == len(bars)

    by_status = {status: [a for a in answers if a.status == status] for status in {a.status for a in answers}}
    assert set(by_status) <= {200, 503}, {s: [a.error or a.body for a in v[:2]] for s, v in by_status.items()}
    assert len(by_status.get(503, [])) > 0, f"no request failed while MongoDB was down ({killed_at}-{restarted_at})"
    assert len(by_status.get(200, [])) >= len(bars) // 4  # at least those answered before the kill
    for answer in by_status.get(503, []):
        message = answer.body["error"]
        assert "MongoDB" in message and "retry" in message, message
        assert "127.0.0.1" not in message and str(reliable.ports[2]) not in message  # no server address to callers
    assert max(a.seconds for a in answers) <= ANSWER_BOUND_S

    documents = reliable.documents(as_of={"$gte": reliable.as_of(bars[0]), "$lte": reliable.as_of(bars[-1])})
    keys = [(d["model_version"], pd.Timestamp(d["as_of"])) for d in documents]
    assert len(keys) == len(set(keys))  # never twice
    stored = {key: d for key, d in zip(keys, documents, strict=True)}
    for answer in by_status[200]:
        body = answer.body
        document = stored.get((body["model_version"], pd.Timestamp(body["as_of"])))
        assert body["stored"] and document is not None, f"{body['request_id']} answered as stored but is missing"
        assert document["request_id"] == body["request_id"] and document["weights"] == body["weights"]
    print(f"\nMongoDB killed after {killed_at} answers, back after {restarted_at}: "
          f"{len(by_status[200])} stored, {len(by_status.get(503, []))} answered 503")

    deadline = time.monotonic() + RECOVERY_BOUND_S
    while httpx.get(f"{reliable.url}/readyz", timeout=10).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert httpx.get(f"{reliable.url}/readyz", timeout=10).status_code == 200
    for bar in after_restart:
        response = httpx.post(f"{reliable.url}/predict", json=reliable.payload(bar, f"after-{bar}"), headers=KEY,
                              timeout=60)
        assert response.status_code == 200, response.text
        assert len(reliable.documents(request_id=f"after-{bar}")) == 1
    assert reliable.process.poll() is None and reliable.process.pid == pid  # the same server, never restarted
