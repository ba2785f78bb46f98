"""The REST route table, declared once in the protos (google.api.http): exactly the
original `/v0` routes, each onto one gRPC method."""

from __future__ import annotations

from google.api import annotations_pb2
from google.protobuf import json_format
from support.routes import V0_ROUTES

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb


def routes() -> dict[tuple[str, str], str]:
    """(HTTP method, path) -> gRPC method, from the descriptors."""
    table = {}
    for method in pb.DESCRIPTOR.services_by_name["KimballService"].methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        key = (verb.upper(), getattr(rule, verb))
        assert key not in table, f"{key} is declared twice"
        table[key] = method.name
    return table


def test_every_v0_route_maps_onto_exactly_one_method() -> None:
    assert routes() == V0_ROUTES


def test_predictions_take_the_original_event_parameter() -> None:
    request = json_format.ParseDict(
        {"event": ["a", "b"], "namespace": "n"}, pb.GetPredictionsRequest()
    )
    assert list(request.events) == ["a", "b"]
    # The proto field name is accepted too, as every protobuf JSON parser does.
    assert list(json_format.ParseDict({"events": ["a"]}, pb.GetPredictionsRequest()).events) == [
        "a"
    ]
