"""The REST gateway application: each route of ``routes`` translated onto its gRPC method.

Requests are turned into protobuf messages (query parameters or the JSON body,
by ``request_json``), the call goes to Kimball's gRPC server with the caller's
``Authorization`` header as metadata (so one token check serves both APIs), and
the answer is rendered in the original API's JSON shape. gRPC statuses become HTTP statuses
through one table.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import swagger_ui_bundle
from aiohttp import web
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.http_status import http_status
from gateway.openapi import openapi_document
from gateway.request_json import RequestJsonError, message_from_json
from gateway.routes import Route, parameter_name, routes_of
from gateway.shapes import BODY_SHAPES, QUERY_SHAPES, RESPONSE_SHAPES, BadBody, BadParameter
from gateway.web_ui import add_web_ui
from kimball_grpc.api.auth import UNAUTHORIZED_MESSAGE, TokenChecker
from kimball_grpc.api.local_channel import LocalChannel
from kimball_grpc.codec.error_details import error_metadata
from kimball_grpc.core.limits import MAX_MESSAGE_BYTES
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.metrics import Metrics

MAX_BODY_BYTES = MAX_MESSAGE_BYTES
CALL_TIMEOUT_SECONDS = 30.0
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ClientError(Exception):
    """A request the gateway refuses before calling gRPC (always a 4xx)."""

    def __init__(self, status: int, what: str, **details: object) -> None:
        super().__init__(what)
        self.status = status
        self.what = what
        self.details = details


def error_response(status: int, what: str, **details: object) -> web.Response:
    """The original API's error body: ``{"error": {"what": ..., details}}``."""
    return web.json_response({"error": {"what": what, **details}}, status=status)


def failed_call_response(error: grpc.aio.AioRpcError) -> web.Response:
    """A failed gRPC call as the original API's error: the status through one table, the
    ErrorInfo's metadata (which parameter) beside the message."""
    if error.code() is grpc.StatusCode.UNAUTHENTICATED:
        return unauthorized()
    details = error_metadata(error.trailing_metadata())
    return error_response(http_status(error.code()), error.details() or "", **details)


def unauthorized() -> web.Response:
    return web.json_response({"error": UNAUTHORIZED_MESSAGE}, status=401)


def build_app(
    channel: grpc.aio.Channel | LocalChannel, metrics: Metrics | None, checker: TokenChecker | None
) -> web.Application:
    """The gateway for a Kimball gRPC server reachable over ``channel`` (network or local)."""
    middlewares = [_request_metrics(metrics)] if metrics is not None else []
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    routes = routes_of(pb.DESCRIPTOR.services_by_name["KimballService"])
    for route in routes:
        make = _stream_route_handler if route.client_streaming else _route_handler
        handler = make(route, channel, checker)
        app.router.add_route(route.http_method, route.path, handler)
        app.router.add_route(route.http_method, route.path + "/", handler)  # as the original
    document = openapi_document(routes)
    app.router.add_get("/api-docs", _json_document(document))
    app.router.add_get("/api-docs/openapi.json", _json_document(document))
    app.router.add_get("/api-docs/index.html", _docs_page)
    app.router.add_static("/api-docs/static/", swagger_ui_bundle.swagger_ui_path)
    app.router.add_get("/alive", _alive)
    app.router.add_get("/ready", _ready_handler(channel))
    if metrics is not None:  # a standalone gateway has none: the server's are elsewhere
        for path, registry in (
            ("/metrics", metrics.registry),
            ("/metrics/counters", metrics.counters_registry),
            ("/metrics/predictions", metrics.predictions_registry),
        ):
            app.router.add_get(path, _metrics_handler(registry, checker))
    add_web_ui(app)
    return app


def _request_metrics(metrics: Metrics) -> Callable:
    """Counts and times every request by its declared route (unknown paths: "other")."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.observe_http(route, request.method, status, time.perf_counter() - start)

    return observe


def _route_handler(
    route: Route, channel: grpc.aio.Channel | LocalChannel, checker: TokenChecker | None
) -> Handler:
    call = channel.unary_unary(
        route.grpc_method,
        request_serializer=route.request_type.SerializeToString,
        response_deserializer=route.response_type.FromString,
    )
    shape = RESPONSE_SHAPES.get(route.name)

    async def handle(request: web.Request) -> web.StreamResponse:
        # Checked before the body is read: a caller without a token learns nothing more.
        # The gRPC server checks the forwarded header again (same TokenChecker).
        authorization = request.headers.get("Authorization")
        if checker is not None and not checker.allows(authorization):
            return unauthorized()
        try:
            message = await _request_message(route, request)
        except ClientError as error:
            return error_response(error.status, error.what, **error.details)
        metadata = (("authorization", authorization),) if authorization else ()
        try:
            response = await call(message, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            return failed_call_response(error)
        if shape is None:
            return web.Response(status=204)
        return web.json_response(shape(response))

    return handle


STREAM_TYPES = ("application/x-ndjson", "text/plain")  # text/plain: what tools send plain
STREAM_CHUNK_BYTES = 64 * 1024


def _stream_route_handler(
    route: Route, channel: grpc.aio.Channel | LocalChannel, checker: TokenChecker | None
) -> Handler:
    """A client-streaming method: a newline-delimited JSON body, one message per line,
    each sent on as it is read (a line may also be one event or an array of events)."""
    call = channel.stream_unary(
        route.grpc_method,
        request_serializer=route.request_type.SerializeToString,
        response_deserializer=route.response_type.FromString,
    )
    shape = RESPONSE_SHAPES[route.name]
    adapt = BODY_SHAPES.get(route.name, lambda data: data)

    async def handle(request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        if checker is not None and not checker.allows(authorization):
            return unauthorized()
        if request.content_type not in STREAM_TYPES:
            return error_response(
                415,
                "The content-type is invalid",
                type=request.content_type,
                expected_types=list(STREAM_TYPES),
            )
        refused: list[ClientError] = []  # a bad line ends the stream; said after the call

        async def messages() -> AsyncIterator[Message]:
            if not request.body_exists:  # no body: a stream of no messages
                return
            index = 0
            lines = _lines(request)
            while True:
                try:
                    line = await anext(lines, None)
                    if line is None:
                        return
                    if not line.strip():
                        continue
                    data = adapt(json.loads(line))
                    if not isinstance(data, dict):
                        raise BadBody("each line must be a JSON object or array")
                    message = message_from_json(data, route.request_type)
                except (ValueError, RecursionError) as exc:  # JSON, shape, size, protobuf
                    what = exc.what if isinstance(exc, RequestJsonError) else str(exc)
                    refused.append(ClientError(400, f"message {index}: {what}", message=index))
                    return
                yield message
                index += 1

        metadata = (("authorization", authorization),) if authorization else ()
        try:
            response = await call(messages(), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            return failed_call_response(error)
        if refused:
            accepted = shape(response)
            return error_response(400, refused[0].what, **refused[0].details, **accepted)
        return web.json_response(shape(response))

    return handle


async def _lines(request: web.Request) -> AsyncIterator[bytes]:
    """The body's lines as they arrive; ``ValueError`` for a line over ``MAX_BODY_BYTES``
    (one message's limit), found without holding more than that in memory."""
    too_long = f"a line is longer than {MAX_BODY_BYTES} bytes: split it"
    pending = b""
    async for chunk in request.content.iter_chunked(STREAM_CHUNK_BYTES):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            if len(line) > MAX_BODY_BYTES:
                raise ValueError(too_long)
            yield line
        if len(pending) > MAX_BODY_BYTES:
            raise ValueError(too_long)
    if pending:
        yield pending


async def _request_message(route: Route, request: web.Request) -> Message:
    if route.body:
        data = await _json_body(request)
        adapt = BODY_SHAPES.get(route.name)
        if adapt is not None:
            try:
                data = adapt(data)
            except BadBody as exc:
                raise ClientError(400, str(exc)) from None
        if not isinstance(data, dict):
            raise ClientError(400, "The body must be a JSON object")
        if route.body != "*":  # the body is one field of the request
            data = {route.body: data}
    elif route.name in QUERY_SHAPES:
        try:
            data = QUERY_SHAPES[route.name](request.query)
        except BadParameter as exc:
            raise ClientError(400, str(exc), parameter=exc.parameter) from None
    else:
        data = _query(route, request)
    data.update(request.match_info)  # path parameters: /v0/featureSpecs/{name}
    try:
        return message_from_json(data, route.request_type)
    except RequestJsonError as exc:
        raise ClientError(400, exc.what, **exc.details) from None


async def _json_body(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise ClientError(
            415,
            "The content-type is invalid",
            type=request.content_type,
            expected_types=["application/json"],
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ClientError(
            413, f"The body is larger than {MAX_BODY_BYTES} bytes", limit=MAX_BODY_BYTES
        ) from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ClientError(400, "The object is not valid JSON", why=str(exc)) from None


def _query(route: Route, request: web.Request) -> dict[str, object]:
    """Query parameters as a request dict; unknown or repeated scalars are refused."""
    fields = {
        parameter_name(f): f
        for f in route.request_type.DESCRIPTOR.fields
        if f"{{{f.name}}}" not in route.path  # a path parameter is not a query parameter
    }
    data: dict[str, object] = {}
    for key in dict.fromkeys(request.query.keys()):
        field = fields.get(key)
        if field is None:
            raise ClientError(400, "Unknown parameter", parameter=key, known=sorted(fields))
        values = request.query.getall(key)
        if field.is_repeated:
            data[field.name] = values
        elif len(values) > 1:
            raise ClientError(400, "Parameter given more than once", parameter=key)
        else:
            data[field.name] = values[0]
    return data


def _json_document(document: dict) -> Handler:
    body = json.dumps(document, indent=2).encode()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return serve


# Swagger UI from the installed swagger-ui-bundle package: no CDN. Open, like the
# health routes: it holds no data; its "Authorize" button takes the token for the calls.
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kimball API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/api-docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/api-docs/static/swagger-ui-bundle.js"></script>
<script src="/api-docs/static/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/api-docs/openapi.json", dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "BaseLayout"});
</script></body></html>
"""


async def _docs_page(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html")


async def _alive(request: web.Request) -> web.Response:
    return web.Response(text="ok!")


def _ready_handler(channel: grpc.aio.Channel | LocalChannel) -> Handler:
    check = channel.unary_unary(  # the one health method needed: not the whole stub
        HEALTH_CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )

    async def ready(request: web.Request) -> web.Response:
        try:
            answer = await check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return web.Response(status=503, text="not ready")
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            return web.Response(status=503, text="not ready")
        return web.Response(text="ok!")

    return ready


def _metrics_handler(registry: CollectorRegistry, checker: TokenChecker | None) -> Handler:
    async def metrics(request: web.Request) -> web.Response:
        if checker is not None and not checker.allows(request.headers.get("Authorization")):
            return unauthorized()
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return metrics
