"""The REST gateway application: the route table's routes, their OpenAPI document and
its page, the health routes, ``/metrics`` and the web UI.

Each route of ``route_table`` is translated onto its gRPC method by ``handlers``; gRPC
statuses become HTTP statuses through one table (``http_status``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial

import grpc
import swagger_ui_bundle
from aiohttp import web
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.connections import ConnectionGuard
from gateway.event_stream import add_event_stream_shutdown, event_stream_handler
from gateway.handlers import (
    Channel,
    Handler,
    Metadata,
    Serve,
    declared_route,
    guarded,
    route_handler,
)
from gateway.http_log import OBSERVED
from gateway.openapi import openapi_document
from gateway.route_table import ROUTE_TABLE, EventStream
from gateway.translate import MAX_BODY_BYTES
from gateway.web_ui import add_web_ui
from kimball_grpc.api.auth import TokenChecker
from kimball_grpc.api.grpc_front import INGESTION_METHODS
from kimball_grpc.config.logs import REQUEST_ID_HEADER, CallContext, current_call, request_id_from
from kimball_grpc.config.settings import HttpLimits
from kimball_grpc.metrics import METRICS_PATHS, HttpMetrics, Metrics

__all__ = ["MAX_BODY_BYTES", "build_app"]

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
Exposition = Callable[[str], Awaitable[bytes]]  # a metrics path's text, from wherever it is


def build_app(
    channel: Channel,
    metrics: HttpMetrics | None,
    checker: TokenChecker | None,
    connections: ConnectionGuard | None = None,
    exposition: Exposition | None = None,
) -> web.Application:
    """The gateway for a Kimball gRPC server reachable over ``channel`` (network or local),
    its requests timed within the limits of ``connections`` (the defaults if None), which
    learns from it when each request's headers came. Requests are counted in ``metrics``.
    ``/metrics`` shows what ``exposition`` fetches (a REST worker process's: the server
    process's), else the server's ``metrics`` when they are in this process, else is not
    served (a standalone gateway)."""
    if exposition is None and isinstance(metrics, Metrics):
        exposition = partial(asyncio.to_thread, metrics.exposition)
    connections = connections or ConnectionGuard(HttpLimits(), metrics)
    ingestion = frozenset(
        (route.http_method, path)
        for route in ROUTE_TABLE
        if route.rule.grpc_method in INGESTION_METHODS
        for path in (route.path, route.path + "/")
    )
    middlewares = [connections.middleware, _observed(metrics, ingestion)]
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    body_timeout = connections.limits.body_timeout_s
    add_event_stream_shutdown(app)
    for route in ROUTE_TABLE:
        if isinstance(route.answer, EventStream):
            handler = event_stream_handler(route, channel, checker, body_timeout)
        else:
            handler = route_handler(route, channel, checker, body_timeout)
        app.router.add_route(route.http_method, route.path, handler)
        app.router.add_route(route.http_method, route.path + "/", handler)  # as the original
    document = _json_document(openapi_document(ROUTE_TABLE))
    app.router.add_get("/api-docs", document)
    app.router.add_get("/api-docs/openapi.json", document)
    app.router.add_get("/api-docs/swagger.json", document)  # where the original served it
    app.router.add_get("/api-docs/index.html", _docs_page)
    app.router.add_static("/api-docs/static/", swagger_ui_bundle.swagger_ui_path)
    app.router.add_get("/alive", _alive)
    app.router.add_get("/ready", _ready_handler(channel))
    if exposition is not None:
        for path in METRICS_PATHS:
            app.router.add_get(path, guarded(checker, _metrics_handler(exposition, path)))
    add_web_ui(app)
    return app


def _observed(metrics: HttpMetrics | None, ingestion: frozenset[tuple[str, str]]) -> Callable:
    """Each request's request id: the caller's ``X-Request-Id`` if it is a sane short token,
    else a fresh one; on every log line written while the request is served, sent on to
    the gRPC call, and echoed in the answer. With ``metrics``, each request is counted and
    timed by its declared route (unknown paths: "other"), and a request to an ``ingestion``
    route (method, declared path) refused before its events reached the ingestion path
    counts as one refused event."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        route = declared_route(request)
        given = request.headers.getall(REQUEST_ID_HEADER, ())
        call = CallContext(request_id_from(given[0] if len(given) == 1 else None), "rest")
        current_call.set(call)  # aiohttp serves each request in a task of its own
        request[OBSERVED] = (call, route)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            response.headers[REQUEST_ID_HEADER] = call.request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = call.request_id
            raise
        finally:
            if metrics is not None:
                metrics.observe_http(route, request.method, status, time.perf_counter() - start)
                refused = status >= 400 and not call.events_counted
                if refused and (request.method, route) in ingestion:
                    metrics.refuse_request(status)

    return observe


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


def _ready_handler(channel: Channel) -> Handler:
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


def _metrics_handler(exposition: Exposition, path: str) -> Serve:
    async def metrics(request: web.Request, metadata: Metadata) -> web.Response:
        body = await exposition(path)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
