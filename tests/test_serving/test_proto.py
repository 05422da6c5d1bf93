"""The gRPC contract: committed stubs match the .proto, messages round-trip, the stubs work over a channel."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from serving.proto import PROTO_FILE, REPO_ROOT, generate_stubs
from serving.proto import neuralfusion_pb2 as pb
from serving.proto import neuralfusion_pb2_grpc as pb_grpc
from serving.proto_convert import timestamp

T0 = datetime(2026, 1, 5, 0, 3, tzinfo=UTC)

STUBS = ("neuralfusion_pb2.py", "neuralfusion_pb2.pyi", "neuralfusion_pb2_grpc.py")


@pytest.fixture(scope="module")
def fresh_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    generate_stubs(out)
    return out / "serving" / "proto"


@pytest.mark.parametrize("name", STUBS)
def test_committed_stubs_are_up_to_date(name: str, fresh_stubs: Path) -> None:
    fresh = (fresh_stubs / name).read_bytes()
    committed = (PROTO_FILE.parent / name).read_bytes()
    assert fresh == committed, f"serving/proto/{name} is stale: run `make proto` and commit it"


def test_stubs_import_each_other_by_package_path() -> None:
    source = (REPO_ROOT / "serving" / "proto" / "neuralfusion_pb2_grpc.py").read_text()
    assert "from serving.proto import neuralfusion_pb2 as" in source


def test_service_has_the_five_rpcs_answering_the_http_shapes() -> None:
    service = pb.DESCRIPTOR.services_by_name["PortfolioService"]
    assert service.full_name == "neuralfusion.v2.PortfolioService"
    assert {m.name: (m.input_type.name, m.output_type.name) for m in service.methods} == {
        "Predict": ("PredictRequest", "Prediction"),
        "PredictAt": ("PredictAtRequest", "Prediction"),
        "PredictColumns": ("PredictColumnsRequest", "Prediction"),
        "GetLatest": ("LatestRequest", "Prediction"),
        "GetHistory": ("HistoryRequest", "HistoryResponse"),
    }
    prediction = pb.Prediction.DESCRIPTOR.fields_by_name
    assert prediction["weights"].message_type.GetOptions().map_entry  # keyed by symbol, as HTTP's weights
    assert prediction["weights"].message_type.fields_by_name["key"].type == prediction["symbols"].type
    times = {(m.name, f.name) for m in pb.DESCRIPTOR.message_types_by_name.values() for f in m.fields
             if f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp"}
    assert times == {("Bar", "timestamp"), ("NewsItem", "published_at"), ("Prediction", "as_of"),
                     ("PredictAtRequest", "as_of"),
                     ("HistoryRequest", "start"), ("HistoryRequest", "end"), ("HistoryRequest", "before"),
                     ("HistoryResponse", "next_before")}


def test_the_proto_names_its_go_and_java_packages() -> None:
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package == "neuralfusioncore/gen/go/neuralfusion/v2;neuralfusionv2"
    assert options.java_package == "com.neuralfusioncore.neuralfusion.v2" and options.java_multiple_files


def test_predict_request_round_trips() -> None:
    request = pb.PredictRequest(
        bars=[pb.Bar(timestamp=timestamp(T0), symbol="AURX", open=100.0, high=100.2, low=99.9, close=100.1,
                     volume=5123.0)],
        news=[pb.NewsItem(id="n1", published_at=timestamp(T0), title="Aurexa", body="text", symbols=["AURX"],
                          has_symbols=True),
              pb.NewsItem(id="n2", published_at=timestamp(T0), title="no tickers")],
        request_id="r-1")
    parsed = pb.PredictRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert parsed.bars[0].close == 100.1 and list(parsed.news[0].symbols) == ["AURX"]
    assert parsed.bars[0].timestamp.ToJsonString() == "2026-01-05T00:03:00Z" and not parsed.news[1].has_symbols


def test_history_response_round_trips() -> None:
    item = pb.Prediction(model_version="v1", as_of=timestamp(T0), symbols=["AURX", "BLTQ"],
                         weights={"AURX": 0.6, "BLTQ": 0.4}, logits={"AURX": 0.3, "BLTQ": -0.1}, horizon_bars=80,
                         request_id="r-1", stored=True)
    response = pb.HistoryResponse(items=[item, item], next_before=timestamp(T0))
    assert pb.HistoryResponse.FromString(response.SerializeToString()) == response


class LatestOnly(pb_grpc.PortfolioServiceServicer):
    async def GetLatest(self, request: pb.LatestRequest, context: grpc.aio.ServicerContext) -> pb.Prediction:
        return pb.Prediction(model_version=request.model_version or "any", stored=True)


def test_stubs_serve_and_call_over_a_channel() -> None:
    async def main() -> tuple[pb.Prediction, grpc.StatusCode]:
        server = grpc.aio.server()
        pb_grpc.add_PortfolioServiceServicer_to_server(LatestOnly(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.PortfolioServiceStub(channel)
                latest = await stub.GetLatest(pb.LatestRequest(model_version="v7"), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
                    await stub.GetHistory(pb.HistoryRequest(), timeout=10)
                return latest, unimplemented.value.code()
        finally:
            await server.stop(grace=None)

    latest, code = asyncio.run(main())
    assert latest.model_version == "v7" and latest.stored
    assert code == grpc.StatusCode.UNIMPLEMENTED
