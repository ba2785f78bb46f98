"""The route table: every REST route of the gateway, one entry each.

A route's HTTP method and path are its gRPC method's ``google.api.http`` option in
``protos/kimball/v1/kimball.proto``, the one place paths are declared. Its entry here
says the rest: the request's shape (query parameters, a JSON body or a stream of
newline-delimited JSON), the answer's shape, and the OpenAPI summary. Routing
(``app``), request translation (``translate``) and the OpenAPI document (``openapi``)
are all read from this table.

To add a route: declare the ``google.api.http`` option on the method in the proto, then
add one ``Route`` to ``ROUTE_TABLE``; a new JSON shape goes in ``request_shapes`` or
``response_shapes``, its schema in ``schemas``. The table is checked against the proto
when this module is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from multidict import MultiMapping

from gateway import request_shapes, response_shapes, schemas
from gateway.proto_http import HttpRule, http_rules
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

Json = Any
Adapt = Callable[[Json], Json]


@dataclass(frozen=True)
class JsonBody:
    """The request from an ``application/json`` body (the proto's ``body`` option says
    whether the whole request or one field of it)."""

    schema: Json  # the body's OpenAPI schema
    adapt: Adapt | None = None  # what original clients send -> the request's JSON


@dataclass(frozen=True)
class NdjsonBody:
    """A client stream's body: newline-delimited JSON, one request message a line."""

    description: str  # the OpenAPI text for the body
    adapt: Adapt | None = None  # per line, as ``JsonBody.adapt``


@dataclass(frozen=True)
class FieldQuery:
    """Query parameters named after the request's fields (their json_name where the proto
    sets one); a path parameter fills its field."""

    required: frozenset[str] = frozenset()  # the fields a caller cannot leave out


@dataclass(frozen=True)
class ShapedQuery:
    """Query parameters of the original API that are not the request's fields."""

    parse: Callable[[MultiMapping[str]], Json]  # the query -> the request's JSON
    parameters: tuple[Json, ...]  # their OpenAPI parameter objects


RequestShape = JsonBody | NdjsonBody | FieldQuery | ShapedQuery


@dataclass(frozen=True)
class Answer:
    """A success with a JSON body (200): the response message in the original API's shape."""

    render: Callable[[Message], Json]
    schema: Json  # its OpenAPI schema


@dataclass(frozen=True)
class EventStream:
    """A server stream's answer: ``text/event-stream`` (Server-Sent Events), one event per
    response message, its ``data`` the message's JSON and its ``id`` the resume position."""

    render: Callable[[Message], Json]  # one response message -> its event's JSON
    event_id: Callable[[Message], str]  # what a client sends back as Last-Event-ID
    resume_field: str  # the request field Last-Event-ID fills
    schema: Json  # the OpenAPI schema of one event's data


@dataclass(frozen=True)
class Route:
    """One REST route: the gRPC method it translates onto, its request and answer shapes,
    and its OpenAPI summary. HTTP method and path come from the method's proto option."""

    method: str  # the gRPC method's short name in KimballService
    summary: str
    request: RequestShape = FieldQuery()
    answer: Answer | EventStream | None = None  # None: success is 204 with no body

    @property
    def rule(self) -> HttpRule:
        """The method's ``google.api.http`` option and its message types."""
        return PROTO_RULES[self.method]

    @property
    def http_method(self) -> str:
        """GET, POST, ... as the proto option says."""
        return self.rule.http_method

    @property
    def path(self) -> str:
        """The path as the proto option says, ``{field}`` for a path parameter."""
        return self.rule.path


def _strings(field: str) -> Answer:
    return Answer(response_shapes.strings_json(field), schemas.strings(field))


_FEATURE_SPEC = Answer(response_shapes.feature_spec_json, schemas.FEATURE_SPEC)

PROTO_RULES = http_rules(pb.DESCRIPTOR.services_by_name["KimballService"])

ROUTE_TABLE: tuple[Route, ...] = (
    Route(
        "TrackEvents",
        'Track events: one, {"events": [...]} or an array; all or nothing',
        request=JsonBody(schemas.TRACK_EVENTS, request_shapes.track_events_body),
    ),
    Route(
        "StreamEvents",
        "Track events as a stream of newline-delimited JSON batches",
        request=NdjsonBody(
            "Newline-delimited JSON: per line, one batch, one event or an array of events, "
            "applied as it is read. A bad line ends the request with a 400 naming it "
            "(`message`, from 0) and saying what was accepted before it.",
            request_shapes.track_events_body,
        ),
        answer=Answer(response_shapes.stream_events_json, schemas.STREAM_EVENTS),
    ),
    Route(
        "GetAnalytics",
        "The counters of a namespace",
        answer=Answer(response_shapes.analytics_json, schemas.ANALYTICS),
    ),
    Route(
        "Subscribe",
        "Accepted events, live, as Server-Sent Events (resume with Last-Event-ID)",
        answer=EventStream(
            response_shapes.subscribed_event_json,
            lambda response: str(response.sequence),
            "after_sequence",
            schemas.SUBSCRIBED_EVENT,
        ),
    ),
    Route("CreateGoal", "Mark an event name as a goal", request=JsonBody(schemas.CREATE_GOAL)),
    Route("ListGoals", "The goals of a namespace", answer=_strings("goals")),
    Route("ListNamespaces", "Every namespace that holds data", answer=_strings("namespaces")),
    Route(
        "GetPredictions",
        "Predictions: for every goal, for events, or for a user's events",
        answer=Answer(response_shapes.predictions_json, schemas.PREDICTIONS),
    ),
    Route(
        "GetNudges",
        "The goal's events a user has not done, most predictive first",
        request=FieldQuery(required=frozenset({"goal", "user_id"})),
        answer=Answer(response_shapes.nudges_json, schemas.NUDGES),
    ),
    Route(
        "PutFeatureSpec",
        "Create or replace a feature flag spec",
        request=JsonBody(schemas.FEATURE_SPEC, request_shapes.feature_spec_body),
        answer=_FEATURE_SPEC,
    ),
    Route("GetFeatureSpec", "One feature flag spec", answer=_FEATURE_SPEC),
    Route(
        "ListFeatureSpecs",
        "Every feature flag spec, by name",
        answer=Answer(response_shapes.feature_specs_json, schemas.FEATURE_SPECS),
    ),
    Route("DeleteFeatureSpec", "Delete a feature flag spec"),
    Route(
        "GetFeatureSpecHistory",
        "A feature flag's recent changes, newest first",
        answer=Answer(response_shapes.feature_spec_history_json, schemas.FEATURE_SPEC_HISTORY),
    ),
    Route(
        "EvaluateFeatures",
        "Every feature flag for a user (counts a feature's usage)",
        request=ShapedQuery(request_shapes.features_query, schemas.FEATURES_QUERY),
        answer=Answer(response_shapes.features_json, schemas.FEATURES),
    ),
)


def _check(table: tuple[Route, ...]) -> None:
    """Every method with a ``google.api.http`` option has exactly one entry, every entry
    such a method, and each entry's request shape matches its option (a body or not, a
    client stream or not)."""
    methods = [route.method for route in table]
    problems = [f"{m}: more than one entry" for m in sorted(set(methods)) if methods.count(m) > 1]
    problems += [f"{m}: no google.api.http option" for m in methods if m not in PROTO_RULES]
    problems += [f"{m}: not in ROUTE_TABLE" for m in PROTO_RULES if m not in methods]
    for route in table:
        rule = PROTO_RULES.get(route.method)
        if rule is None:
            continue
        streams = isinstance(route.request, NdjsonBody)
        has_body = streams or isinstance(route.request, JsonBody)
        answers_stream = isinstance(route.answer, EventStream)
        if (
            streams != rule.client_streaming
            or has_body != bool(rule.body)
            or answers_stream != rule.server_streaming
        ):
            problems.append(f"{route.method}: {type(route.request).__name__} does not fit {rule}")
    if problems:
        raise ValueError("the route table does not match the proto: " + "; ".join(problems))


_check(ROUTE_TABLE)
