"""The REST routes the protos declare: each gRPC method's ``google.api.http`` option."""

from __future__ import annotations

from dataclasses import dataclass

from google.api import annotations_pb2
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass


def parameter_name(field: FieldDescriptor) -> str:
    """A field's query parameter name: its proto name, or a json_name set in the proto
    (``repeated string events = 2 [json_name = "event"]`` takes ``?event=``)."""
    default_json = "".join(
        part if i == 0 else part[:1].upper() + part[1:]
        for i, part in enumerate(field.name.split("_"))
    )
    return field.json_name if field.json_name != default_json else field.name


@dataclass(frozen=True)
class HttpRule:
    """A gRPC method's HTTP route, as its ``google.api.http`` option declares it."""

    http_method: str  # GET, POST, ...
    path: str
    grpc_method: str  # full path: /package.Service/Method
    name: str  # the method's short name
    request_type: type[Message]
    response_type: type[Message]
    body: str  # "*" for the whole request from the body, a field's name, "" for none
    client_streaming: bool = False  # the body is newline-delimited JSON, a message a line
    server_streaming: bool = False  # the answer is Server-Sent Events, a message an event

    def in_path(self, field: FieldDescriptor) -> bool:
        """Whether ``field`` is a path parameter (``/v0/featureSpecs/{name}``), so not a
        query parameter."""
        return f"{{{field.name}}}" in self.path


def http_rules(service: ServiceDescriptor) -> dict[str, HttpRule]:
    """The HTTP rule of every method of ``service`` that declares one, by method name, in
    the order the proto declares them."""
    found = {}
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        found[method.name] = HttpRule(
            http_method=verb.upper(),
            path=getattr(rule, verb),
            grpc_method=f"/{service.full_name}/{method.name}",
            name=method.name,
            request_type=GetMessageClass(method.input_type),
            response_type=GetMessageClass(method.output_type),
            body=rule.body,
            client_streaming=method.client_streaming,
            server_streaming=method.server_streaming,
        )
    return found
