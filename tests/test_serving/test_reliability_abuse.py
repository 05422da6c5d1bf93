"""A hostile or clumsy caller against the shared `nfc serve` (tests/serving_servers.py `reliable`), one test per way
in: the old internal batch route with 100,000 fake jobs, bodies of 200 MB without (and with) the key, streamed
bodies over the limit, stalled bodies (slow loris), timestamps the server cannot represent, as-of bars from the
future, oversize strings, a second request for a stored (model version, as-of), and every read without the key.
Each is refused with a 4xx (gRPC: its code) that says why, before anything is parsed where the key or the size
decides; no 5xx, nothing written; and afterwards a normal /predict answers within 2x its latency before the abuse.

The 200 MB and slow-loris runs at full size are in the slow set; the default run sends smaller versions."""

from __future__ import annotations

import json
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pandas as pd
import pytest
from serving_servers import API_KEY, AS_OF_BARS, BODY_TIMEOUT_S, KEY

from serving.client import request_to_proto
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc
from serving.proto_convert import timestamp

pytestmark = pytest.mark.integration

PROBE_BAR = AS_OF_BARS["abuse"][0]  # the normal request timed before and after each abuse (same inputs each time)
MB = 1 << 20
GRPC_KEY = [("x-api-key", API_KEY)]


def predict_latency(reliable, n: int = 5) -> float:
    """Median seconds of `n` sequential /predict calls of the probe request (each through the whole path; all
    but the first are answered as duplicates of the first)."""
    seconds = []
    for _ in range(n):
        started = time.monotonic()
        response = httpx.post(f"{reliable.url}/predict", json=reliable.payload(PROBE_BAR, "abuse-probe"),
                              headers=KEY, timeout=60)
        seconds.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
    return statistics.median(seconds)


@pytest.fixture
def baseline(reliable) -> float:
    """/predict's latency right before the test's abuse (the shared host's load drifts over a module)."""
    predict_latency(reliable, 2)  # warm: the first call stores the probe
    return predict_latency(reliable)


def assert_recovered(reliable, baseline: float, abuse: str) -> None:
    after = predict_latency(reliable)
    print(f"\n{abuse}: /predict {after * 1000:.0f} ms after, {baseline * 1000:.0f} ms before "
          f"({after / baseline:.2f}x)")
    assert after <= 2 * baseline, f"after {abuse}, /predict took {after:.3f} s against {baseline:.3f} s before"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def entry_rss_kb(reliable) -> int:
    return sum(rss_kb(pid) for pid in reliable.workers()["neuralfusion"])


def raw_post(url: str, path: str, headers: dict[str, str], chunks: Iterable[bytes]) -> tuple[int, dict[str, Any], int]:
    """POST with a raw socket, sending `chunks` until the server answers or stops reading: (status, JSON body,
    bytes of body sent). The server may answer before the body is complete, as it should for a refused one."""
    address = urlsplit(url)
    head = f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sent = 0
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n")
        sock.settimeout(2)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there: a client stops sending
            try:
                sock.sendall(chunk)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(30)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1]) if head_bytes else 0
    return status, json.loads(body) if body else {}, sent


def _length(answer: bytes) -> int:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 1 << 62


def chunked(total: int, size: int = MB) -> Iterator[bytes]:
    """`total` bytes of a JSON-looking body in HTTP/1.1 chunked framing."""
    for start in range(0, total, size):
        piece = b" " * min(size, total - start)
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def plain(total: int, size: int = MB) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


def stored_count(reliable) -> int:
    return len(reliable.documents())


# -- finding 1: one unauthenticated POST of 100,000 fake jobs to the internal batch route --------------------------


def test_100000_fake_jobs_reach_no_route_and_no_batcher(reliable, baseline):
    before = stored_count(reliable)
    jobs = {"jobs": [{"job": f"{i:032x}", "token": "guess"} for i in range(100_000)]}
    for headers in ({}, KEY):
        response = httpx.post(f"{reliable.url}/predict_batch", json=jobs, headers=headers, timeout=60)
        assert response.status_code == (404 if headers else 401), response.text[:300]
    published = httpx.get(f"{reliable.url}/docs.json", headers=KEY, timeout=30).json()
    assert not {"/predict_batch", "/run", "/encode", "/info"} & set(published["paths"])
    # the public route that could carry 100,000 jobs now: 100,000 bars, over NFC_MAX_BARS
    payload = reliable.payload(PROBE_BAR, "abuse-100k")
    payload["bars"] = [payload["bars"][0]] * 100_000
    response = httpx.post(f"{reliable.url}/predict", json=payload, headers=KEY, timeout=120)
    assert response.status_code == 400 and "over the limit of 20000 (NFC_MAX_BARS)" in response.text
    with grpc.insecure_channel(reliable.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.PortfolioServiceStub(channel).Predict(request_to_proto(payload), metadata=GRPC_KEY, timeout=120)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NFC_MAX_BARS" in refused.value.details()
    assert stored_count(reliable) == before
    assert_recovered(reliable, baseline, "100,000 fake jobs")


# -- finding 2: the key only after parsing; no body size limit ---------------------------------------------------


@pytest.mark.parametrize("bodies", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_200mb_bodies_without_the_key_are_401_before_they_are_read(reliable, baseline, bodies):
    rss_before = entry_rss_kb(reliable)
    for _ in range(bodies):
        status, body, sent = raw_post(reliable.url, "/predict", {"Content-Type": "application/json",
                                                                   "Content-Length": str(200 * MB)}, plain(200 * MB))
        assert status == 401 and "API key" in body["error"] and "detail" not in body
        assert sent < 50 * MB, f"the client got to send {sent / MB:.0f} MB before the refusal"
    grown = (entry_rss_kb(reliable) - rss_before) / 1024
    print(f"\nentry worker RSS grew {grown:.0f} MB over {bodies} x 200 MB bodies without the key")
    assert grown < 50
    assert_recovered(reliable, baseline, f"{bodies} x 200 MB without the key")


def test_bodies_over_the_limit_are_413_by_length_and_by_counted_chunks(reliable, baseline):
    rss_before = entry_rss_kb(reliable)
    status, body, sent = raw_post(reliable.url, "/predict", {**KEY, "Content-Type": "application/json",
                                                              "Content-Length": str(200 * MB)}, plain(200 * MB))
    assert status == 413 and "NFC_MAX_BODY_BYTES" in body["error"] and sent < 50 * MB
    status, body, sent = raw_post(reliable.url, "/predict", {**KEY, "Content-Type": "application/json",
                                                              "Transfer-Encoding": "chunked"}, chunked(200 * MB))
    assert status == 413 and "NFC_MAX_BODY_BYTES" in body["error"]
    assert sent < 100 * MB, f"{sent / MB:.0f} MB were taken before the refusal"
    response = httpx.post(f"{reliable.url}/predict", content=b" " * (50 * MB), headers={**KEY, "content-type":
                                                                                       "application/json"}, timeout=60)
    assert response.status_code == 413  # the 50 MB body the finding saw accepted
    grown = (entry_rss_kb(reliable) - rss_before) / 1024
    print(f"\nentry worker RSS grew {grown:.0f} MB over three bodies over the limit")
    assert grown < 200
    assert_recovered(reliable, baseline, "bodies over the limit")


@pytest.mark.parametrize("stalled", [20, pytest.param(300, marks=pytest.mark.slow)])
def test_stalled_bodies_are_408_after_the_body_timeout_and_the_server_stays_responsive(reliable, baseline, stalled):
    headers = {**KEY, "Content-Type": "application/json", "Content-Length": "100000"}
    head = "POST /predict HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    address = urlsplit(reliable.url)
    sockets = [socket.create_connection((address.hostname, address.port), timeout=30) for _ in range(stalled)]
    headers_only = [socket.create_connection((address.hostname, address.port), timeout=30) for _ in range(5)]
    try:
        started = time.monotonic()
        for sock in sockets:
            sock.sendall(head.encode() + b'{"bars": [')  # and nothing more
        for sock in headers_only:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        during = predict_latency(reliable, 5)  # the same median of 5 as the baseline
        print(f"\n/predict with {stalled} stalled bodies open: {during * 1000:.0f} ms")
        assert during <= 2 * baseline
        statuses = []
        for sock in sockets:
            sock.settimeout(BODY_TIMEOUT_S + 30)
            statuses.append(sock.recv(65536).split(b" ", 2)[1])
        waited = time.monotonic() - started
    finally:
        for sock in sockets + headers_only:
            sock.close()
    assert set(statuses) == {b"408"} and BODY_TIMEOUT_S * 0.9 <= waited <= BODY_TIMEOUT_S + 30
    assert_recovered(reliable, baseline, f"{stalled} stalled bodies")


# -- finding 3: 500s and gRPC UNKNOWN from timestamps and sizes the server cannot represent ------------------------


def _shifted(payload: dict[str, Any], shift: timedelta) -> dict[str, Any]:
    def moved(iso: str) -> str:
        return (pd.Timestamp(iso) + shift).isoformat()
    return {"bars": [{**bar, "timestamp": moved(bar["timestamp"])} for bar in payload["bars"]],
            "news": [{**item, "published_at": moved(item["published_at"])} for item in payload["news"]],
            "request_id": payload["request_id"]}


def _dated(payload: dict[str, Any], year: int, field: str = "bars") -> dict[str, Any]:
    changed = json.loads(json.dumps(payload))
    key = "timestamp" if field == "bars" else "published_at"
    changed[field][-1][key] = f"{year:04d}" + changed[field][-1][key][4:]
    return changed


def test_unrepresentable_times_and_oversize_strings_are_400_and_invalid_argument(reliable, baseline):
    before = stored_count(reliable)
    payload = reliable.payload(AS_OF_BARS["abuse"][1], "abuse-times")
    assert payload["news"], "the probe window needs news to date one in 2399"
    cases = [_dated(payload, year) for year in (2300, 9999, 1)] + [_dated(payload, 2399, "news")]
    with grpc.insecure_channel(reliable.grpc_target) as channel:
        stub = pb_grpc.PortfolioServiceStub(channel)
        for case in cases:
            response = httpx.post(f"{reliable.url}/predict", json=case, headers=KEY, timeout=60)
            assert response.status_code == 400 and "is outside" in response.text, response.text[:300]
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(request_to_proto(case), metadata=GRPC_KEY, timeout=60)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is outside" in refused.value.details()
        end = {"end": "9999-12-31T23:59:59.999999Z"}
        response = httpx.get(f"{reliable.url}/history", params=end, headers=KEY, timeout=30)
        assert response.status_code == 400 and "is outside" in response.text
        huge = "v" * (17 * MB)
        for route in ("/latest", "/history"):  # GET: a query string is bounded by the HTTP server's line limit
            response = httpx.get(f"{reliable.url}{route}", params={"model_version": "v" * 129}, headers=KEY, timeout=60)
            assert response.status_code == 400 and "at most 128 characters" in response.text, response.text[:300]
        for call in (lambda: stub.GetLatest(pb.LatestRequest(model_version=huge), metadata=GRPC_KEY, timeout=60),
                     lambda: stub.GetHistory(pb.HistoryRequest(model_version=huge), metadata=GRPC_KEY, timeout=60),
                     lambda: stub.GetHistory(pb.HistoryRequest(end=timestamp(datetime(9999, 12, 31, tzinfo=UTC))),
                                            metadata=GRPC_KEY, timeout=60)):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert stored_count(reliable) == before
    assert_recovered(reliable, baseline, "unrepresentable times and 17 MB strings")


# -- finding 4: a second request for a stored (model version, as-of) -----------------------------------------------


def test_other_inputs_for_a_stored_as_of_are_409_and_a_repeat_is_the_stored_prediction(reliable):
    bar = AS_OF_BARS["abuse"][2]
    first = httpx.post(f"{reliable.url}/predict", json=reliable.payload(bar, "abuse-first"), headers=KEY,
                       timeout=60).json()
    assert first["stored"] and not first["duplicate"]
    again = httpx.post(f"{reliable.url}/predict", json=reliable.payload(bar, "abuse-again"), headers=KEY,
                       timeout=60).json()
    assert again["duplicate"] and again["request_id"] == "abuse-first" and again["weights"] == first["weights"]
    other = reliable.payload(bar, "abuse-other")
    for row in other["bars"][-6:]:
        row["close"] = row["high"]  # other inputs for the same as-of: other weights
    response = httpx.post(f"{reliable.url}/predict", json=other, headers=KEY, timeout=60)
    assert response.status_code == 409 and "'abuse-first'" in response.json()["error"]
    with grpc.insecure_channel(reliable.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.PortfolioServiceStub(channel).Predict(request_to_proto(other), metadata=GRPC_KEY, timeout=60)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS and "abuse-first" in refused.value.details()
    [document] = reliable.documents(as_of=reliable.as_of(bar))
    assert document["request_id"] == "abuse-first" and document["weights"] == first["weights"]
    assert len(document["inputs_sha256"]) == 64


# -- finding 5: bars from the future become the newest stored prediction for good ----------------------------------


def test_as_of_bars_after_now_are_refused_and_latest_is_unchanged(reliable):
    latest = httpx.get(f"{reliable.url}/latest", headers=KEY, timeout=30).json()
    before = stored_count(reliable)
    payload = reliable.payload(AS_OF_BARS["abuse"][3], "abuse-future")
    to_now = pd.Timestamp.now(tz="UTC") - pd.Timestamp(payload["bars"][-1]["timestamp"])
    # whole days keep the bar grid: tomorrow, 2126 (after now, representable) and 2261 (past 2200)
    for days, reason in ((to_now.days + 2, "NFC_AS_OF_LEAD_BARS"), (365 * 100 + 7, "NFC_AS_OF_LEAD_BARS"),
                         (365 * 235 + 7, "is outside")):
        response = httpx.post(f"{reliable.url}/predict", json=_shifted(payload, timedelta(days=days)), headers=KEY,
                              timeout=60)
        assert response.status_code == 400 and reason in response.text, response.text[:300]
    assert stored_count(reliable) == before
    assert httpx.get(f"{reliable.url}/latest", headers=KEY, timeout=30).json()["as_of"] == latest["as_of"]


# -- finding 6: the read routes open while NFC_API_KEY is set --------------------------------------------------


def test_every_read_needs_the_key_over_http_and_grpc(reliable):
    for route in ("/latest", "/history", "/model_info", "/docs.json"):
        response = httpx.get(f"{reliable.url}{route}", timeout=30)
        assert response.status_code == 401, (route, response.text)
    for probe in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{reliable.url}{probe}", timeout=30).status_code == 200
    with grpc.insecure_channel(reliable.grpc_target) as channel:
        stub = pb_grpc.PortfolioServiceStub(channel)
        for call in (lambda: stub.GetLatest(pb.LatestRequest(), timeout=30),
                     lambda: stub.GetHistory(pb.HistoryRequest(), timeout=30),
                     lambda: stub.GetLatest(pb.LatestRequest(), metadata=[("x-api-key", "guess")], timeout=30)):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_concurrent_abuse_and_normal_traffic_give_no_5xx(reliable, baseline):
    """The refusals above at once, from threads, while normal requests run: every normal answer is 200."""
    statuses: list[int] = []
    normal: list[int] = []

    def abuse() -> None:
        for _ in range(3):
            statuses.append(httpx.post(f"{reliable.url}/predict", content=b"{" * 65536, timeout=60).status_code)
            statuses.append(httpx.post(f"{reliable.url}/predict", content=b"{", headers=KEY, timeout=60).status_code)

    threads = [threading.Thread(target=abuse) for _ in range(4)]
    for thread in threads:
        thread.start()
    for bar in AS_OF_BARS["abuse"][10:16]:
        normal.append(httpx.post(f"{reliable.url}/predict", json=reliable.payload(bar), headers=KEY,
                                 timeout=60).status_code)
    for thread in threads:
        thread.join()
    assert set(statuses) == {400, 401} and normal == [200] * 6
    assert_recovered(reliable, baseline, "concurrent refusals")
