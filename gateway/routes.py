"""The route table, read from the ``google.api.http`` options of the protos."""

from __future__ import annotations

from dataclasses import dataclass

from google.api import annotations_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass


@dataclass(frozen=True)
class Route:
    """One REST route and the gRPC method it translates onto."""

    http_method: str  # GET, POST, ...
    path: str
    grpc_method: str  # full path: /package.Service/Method
    name: str  # the method's short name
    request_type: type[Message]
    response_type: type[Message]
    body: str  # "*" for the whole request from the body, "" for query parameters


def routes_of(service: ServiceDescriptor) -> list[Route]:
    """Every method of ``service`` that declares an HTTP route."""
    found = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        found.append(
            Route(
                http_method=verb.upper(),
                path=getattr(rule, verb),
                grpc_method=f"/{service.full_name}/{method.name}",
                name=method.name,
                request_type=GetMessageClass(method.input_type),
                response_type=GetMessageClass(method.output_type),
                body=rule.body,
            )
        )
    return found
