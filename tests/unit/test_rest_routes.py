"""The REST route table, declared once in the protos (google.api.http), as SPEC section 4 has it."""

from __future__ import annotations

from google.api import annotations_pb2
from google.protobuf import json_format

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
    assert routes() == {
        ("POST", "/v0/analytics"): "TrackEvents",
        ("POST", "/v0/analytics:stream"): "StreamEvents",
        ("GET", "/v0/analytics"): "GetAnalytics",
        ("POST", "/v0/goals"): "CreateGoal",
        ("GET", "/v0/goals"): "ListGoals",
        ("GET", "/v0/namespaces"): "ListNamespaces",
        ("GET", "/v0/predictions"): "GetPredictions",
        ("GET", "/v0/nudges"): "GetNudges",
        ("POST", "/v0/featureSpecs"): "PutFeatureSpec",
        ("GET", "/v0/featureSpecs"): "ListFeatureSpecs",
        ("GET", "/v0/featureSpecs/{name}"): "GetFeatureSpec",
        ("DELETE", "/v0/featureSpecs/{name}"): "DeleteFeatureSpec",
        ("GET", "/v0/features"): "EvaluateFeatures",
    }


def test_predictions_take_the_original_event_parameter() -> None:
    request = json_format.ParseDict(
        {"event": ["a", "b"], "namespace": "n"}, pb.GetPredictionsRequest()
    )
    assert list(request.events) == ["a", "b"]
    # The proto field name is accepted too, as every protobuf JSON parser does.
    assert list(json_format.ParseDict({"events": ["a"]}, pb.GetPredictionsRequest()).events) == [
        "a"
    ]
