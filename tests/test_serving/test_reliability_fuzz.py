"""Fuzz: schemathesis cases generated from the running service's published OpenAPI (/docs.json), schema-valid and
schema-violating, over every route: no 5xx, and MongoDB gains exactly the predictions of the 2xx /predict answers
(rejected requests write nothing); without the key, every case on an API route is a 401 with no parse details.
gRPC Predict gets random bytes and mutated valid messages (hypothesis):
INVALID_ARGUMENT (ALREADY_EXISTS for other inputs of a stored as-of) or an answer, never INTERNAL or UNKNOWN, and
again no write from a refusal.

The issue's >= 1,000 HTTP requests are in the slow set (1,100 cases took 121-152 s on the shared 2-core machine,
mostly generating them); the default run sends 120."""

from __future__ import annotations

import random
from datetime import UTC
from typing import Any

import grpc
import httpx
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from serving_servers import API_KEY, AS_OF_BARS, KEY

from serving.client import request_to_proto
from serving.columns import ARROW_MEDIA_TYPE
from serving.middleware import OPEN_PATHS
from serving.proto import neuralfusion_pb2 as pb

pytestmark = pytest.mark.integration

GRPC_EXAMPLES = 300
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS)
PREDICT = "/neuralfusion.v2.PortfolioService/Predict"
# /predict/arrow's body is bytes (`format: binary`): fuzz it as schemathesis fuzzes any binary body
schemathesis.serializer.alias(ARROW_MEDIA_TYPE, "application/octet-stream")
FUZZ_SETTINGS = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much])


def stored_keys(reliable) -> set[tuple[str, pd.Timestamp]]:
    return {(d["model_version"], pd.Timestamp(d["as_of"])) for d in reliable.documents()}


@pytest.mark.parametrize("n", [120, pytest.param(1100, marks=[pytest.mark.slow, pytest.mark.timeout(900)])])
def test_schemathesis_cases_from_the_published_openapi_get_no_5xx_and_write_only_when_accepted(reliable, n):
    published = httpx.get(f"{reliable.url}/docs.json", headers=KEY, timeout=30).json()
    assert published["openapi"] == "3.1.0"  # the dialect its pydantic schemas are written in (serving/middleware.py)
    schema = schemathesis.openapi.from_dict(published)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    before = stored_keys(reliable)
    sent: list[tuple[str, str, int]] = []
    accepted: set[tuple[str, pd.Timestamp]] = set()
    server_errors: list[tuple[str, int, str]] = []

    @settings(FUZZ_SETTINGS, max_examples=n)
    @given(case=cases)
    def send(case: Any) -> None:
        response = case.call(base_url=reliable.url, headers=KEY, timeout=60)
        sent.append((case.method, case.path, response.status_code))
        if response.status_code >= 500:
            server_errors.append((f"{case.method} {case.path}", response.status_code, response.text[:300]))
        elif case.path.startswith("/predict") and response.status_code < 300:  # rows, columns or Arrow
            body = response.json()
            accepted.add((body["model_version"], pd.Timestamp(body["as_of"])))

    send()
    routes = {(method, path) for method, path, _ in sent}
    print(f"\n{len(sent)} requests over {len(routes)} routes; statuses "
          f"{sorted({s for _, _, s in sent})}; {len(accepted)} predictions accepted")
    assert len(sent) >= (1000 if n > 1000 else n * 0.9) and len(routes) >= 8, routes
    assert not server_errors, server_errors[:5]
    assert stored_keys(reliable) - before == accepted - before


@pytest.mark.parametrize("n", [80, pytest.param(1000, marks=[pytest.mark.slow, pytest.mark.timeout(900)])])
def test_schemathesis_cases_without_the_key_are_all_401_before_parsing(reliable, n):
    published = httpx.get(f"{reliable.url}/docs.json", headers=KEY, timeout=30).json()
    schema = schemathesis.openapi.from_dict(published)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    before = stored_keys(reliable)
    answers: list[tuple[str, int, str]] = []

    @settings(FUZZ_SETTINGS, max_examples=n)
    @given(case=cases)
    def send(case: Any) -> None:
        response = case.call(base_url=reliable.url, timeout=60)
        answers.append((case.path, response.status_code, response.text[:200]))

    send()
    api = [(path, status, text) for path, status, text in answers if path not in OPEN_PATHS]
    assert len(api) >= n // 2
    assert all(status == 401 and "detail" not in text for _, status, text in api), api[:5]
    assert all(status < 500 for _, status, _ in answers)
    assert stored_keys(reliable) == before


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid message with bytes flipped, cut short, or junk spliced in."""
    def flip(seed: int) -> bytes:
        rng = random.Random(seed)
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)

    return st.one_of(
        st.integers(0, 2**32).map(flip),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=64)).map(
            lambda cut: valid[:cut[0]] + cut[1] + valid[cut[0]:]),
    )


def test_malformed_grpc_messages_are_invalid_argument_never_internal_and_write_only_when_accepted(reliable):
    valid = [request_to_proto(reliable.payload(bar)).SerializeToString() for bar in AS_OF_BARS["grpc_fuzz"][:20]]
    messages = st.one_of(st.binary(max_size=4096), st.sampled_from(valid).flatmap(mutations))
    before = stored_keys(reliable)
    codes: list[grpc.StatusCode] = []
    unexpected: list[tuple[grpc.StatusCode, str]] = []
    accepted: set[tuple[str, pd.Timestamp]] = set()

    with grpc.insecure_channel(reliable.grpc_target) as channel:
        predict = channel.unary_unary(PREDICT, response_deserializer=pb.Prediction.FromString)

        @settings(FUZZ_SETTINGS, max_examples=GRPC_EXAMPLES)
        @given(raw=messages)
        def send(raw: bytes) -> None:
            try:
                reply = predict(raw, metadata=[("x-api-key", API_KEY)], timeout=60)
            except grpc.RpcError as err:
                codes.append(err.code())
                # ALREADY_EXISTS: a mutation still valid but with other inputs for an as-of stored before
                if err.code() not in REFUSALS or not err.details():  # asserted below: hypothesis would shrink
                    unexpected.append((err.code(), (err.details() or "")[:300]))  # and print the 90 kB input
            else:
                codes.append(grpc.StatusCode.OK)
                accepted.add((reply.model_version, pd.Timestamp(reply.as_of.ToDatetime(tzinfo=UTC))))

        send()
    print(f"\n{len(codes)} gRPC messages: {codes.count(grpc.StatusCode.INVALID_ARGUMENT)} INVALID_ARGUMENT, "
          f"{codes.count(grpc.StatusCode.ALREADY_EXISTS)} ALREADY_EXISTS, {codes.count(grpc.StatusCode.OK)} OK")
    assert not unexpected, unexpected[:5]
    assert len(codes) >= GRPC_EXAMPLES * 0.9
    assert stored_keys(reliable) - before == accepted - before
