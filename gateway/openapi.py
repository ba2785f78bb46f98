"""The OpenAPI 3 document of the REST API, read from the route table.

Paths and methods are the protos' ``google.api.http`` options; query parameters are the
request's fields unless the route's entry gives its own; bodies, answers and summaries
are the entries' (``route_table``), the schemas ``schemas``.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import FieldDescriptor

from gateway.event_stream import HEARTBEAT_SECONDS
from gateway.proto_http import parameter_name
from gateway.route_table import (
    EventStream,
    FieldQuery,
    JsonBody,
    NdjsonBody,
    Route,
    ShapedQuery,
)
from gateway.schemas import COMPONENTS, NAME, Json, ref
from gateway.translate import STREAM_TYPES
from kimball_grpc.core.limits import MAX_PAGE_SIZE, MAX_PAGE_TOKEN_CHARS

_MAX_REPEATED = 1_000  # values of one repeated query parameter
# The paging parameters of the paged reads (AIP-158): their own schemas and meaning.
_PAGING: dict[str, tuple[Json, str]] = {
    "page_size": (
        {"type": "integer", "minimum": 0},
        f"At most this many items (above {MAX_PAGE_SIZE}: {MAX_PAGE_SIZE}); a page may hold "
        "fewer, and has next_page_token when another follows. 0 or absent: the whole answer.",
    ),
    "page_token": (
        {"type": "string", "maxLength": MAX_PAGE_TOKEN_CHARS},
        "The next_page_token of the previous page, with the other parameters unchanged.",
    ),
    "name_prefix": (
        NAME,
        "Only the counters of events whose name starts with this (not the global counter).",
    ),
}


# What a route that adds to the state answers past a limit.
LIMIT_REACHED = (
    "A limit would be passed (namespaces, event names, counters, goals, feature specs; a "
    "sidecar's full spool); nothing was changed. The error names the limit and its setting."
)


def _error(description: str, schema: str = "Error") -> Json:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def _field_parameters(route: Route, query: FieldQuery) -> list[Json]:
    """A parameter per request field: in the path where the path names it, else in the query."""
    parameters = []
    for field in route.rule.request_type.DESCRIPTOR.fields:
        schema: Json = NAME if field.type == FieldDescriptor.TYPE_STRING else {"type": "string"}
        if route.rule.in_path(field):
            parameters.append(
                {"name": field.name, "in": "path", "required": True, "schema": schema}
            )
            continue
        if field.is_repeated:
            schema = {"type": "array", "items": schema, "maxItems": _MAX_REPEATED}
        parameter: Json = {
            "name": parameter_name(field),
            "in": "query",
            "required": field.name in query.required,
            "schema": schema,
            "style": "form",
            "explode": True,
        }
        if field.name in _PAGING:
            parameter["schema"], parameter["description"] = _PAGING[field.name]
        parameters.append(parameter)
    return parameters


def _request(route: Route, operation: Json) -> None:
    """The route's request on ``operation``: its body or parameters, and the answers that
    refuse a body."""
    shape = route.request
    responses = operation["responses"]
    if isinstance(shape, NdjsonBody):
        operation["requestBody"] = {
            "required": True,
            "description": shape.description,
            "content": {kind: {"schema": {"type": "string"}} for kind in STREAM_TYPES},
        }
        responses["415"] = _error("The body is not application/x-ndjson (or text/plain)")
        responses["429"] = _error(LIMIT_REACHED)
    elif isinstance(shape, JsonBody):
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": shape.schema}},
        }
        responses["413"] = _error("The body is larger than 4 MiB")
        responses["415"] = _error("The body is not application/json")
        responses["429"] = _error(LIMIT_REACHED)
    elif isinstance(shape, ShapedQuery):
        operation["parameters"] = list(shape.parameters)
    else:
        operation["parameters"] = _field_parameters(route, shape)


def _operation(route: Route) -> Json:
    wrong = _error(
        "A parameter or the body is wrong; nothing was changed. A request line over"
        " 8 KiB is refused by the HTTP server itself, in plain text."
    )
    wrong["content"]["text/plain"] = {"schema": {"type": "string"}}
    responses: Json = {
        "400": wrong,
        "401": _error("Missing or invalid authorization header", "Unauthorized"),
        "404": _error("Not found (a user with no events, a feature spec)"),
        "503": _error("Kimball's gRPC server is unavailable"),
    }
    if "page_size" in route.rule.request_type.DESCRIPTOR.fields_by_name:
        responses["429"] = _error(
            "The whole answer would be larger than the server's max_response_bytes: ask for "
            "pages (page_size)"
        )
    if route.answer is None:
        responses["204"] = {"description": "Done"}
    elif isinstance(route.answer, EventStream):
        responses["200"] = {
            "description": (
                "Server-Sent Events until the client closes the stream or the server shuts "
                "down: per event, `id:` (send it back as Last-Event-ID to resume) and "
                "`data:` one line of JSON with the schema below; a comment line every "
                f"{HEARTBEAT_SECONDS:g} s. A failure after the start is an `event: error` "
                "with the error's JSON, then the end."
            ),
            "content": {"text/event-stream": {"schema": route.answer.schema}},
        }
        responses["429"] = _error(
            "Too many streams or subscribers open at once (KIMBALL_MAX_STREAMS, "
            "KIMBALL_MAX_SUBSCRIBERS)"
        )
    else:
        responses["200"] = {
            "description": "OK",
            "content": {"application/json": {"schema": route.answer.schema}},
        }
    operation: Json = {
        "operationId": route.method,
        "summary": route.summary,
        "responses": responses,
    }
    _request(route, operation)
    return operation


def openapi_document(routes: Iterable[Route]) -> Json:
    """The OpenAPI 3 document of ``routes`` and the open health routes."""
    paths: Json = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _operation(route)
    text = {"description": "ok!", "content": {"text/plain": {"schema": {"type": "string"}}}}
    for path, summary in (("/alive", "Alive"), ("/ready", "Ready to serve")):
        paths[path] = {
            "get": {
                "operationId": summary.split()[0].lower(),
                "summary": summary,
                "security": [],
                "responses": {"200": text, "503": {"description": "Not ready"}},
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Kimball API",
            "version": "v0",
            "description": "The original Kimball HTTP API, translated onto Kimball's gRPC API.",
        },
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
